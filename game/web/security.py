"""Security headers for every response, a per-request CSP nonce, and production cookie settings.

A small `after_request` rather than flask-talisman: talisman's last release (1.1.0,
2023) predates Flask 3.1, and what we need is a handful of headers. The pages run
no inline script (play/live/boards/share JS are static files) and style with
static/style.css; the two admin templates keep their small inline <style> blocks,
which carry the request's nonce (`{{ csp_nonce() }}`), so the policy never needs
'unsafe-inline'.

Headers (setdefault: a view that needs something else sets its own first):
  Content-Security-Policy   default-src 'self'; no inline script, styles from 'self' + nonce;
                            images from 'self' and data: (the favicon); connect-src 'self'
                            (the page's own websocket and /api); no framing, no <base>, no plugins
  X-Content-Type-Options    nosniff
  X-Frame-Options           DENY (older browsers; CSP frame-ancestors for the rest)
  Referrer-Policy           same-origin
  Permissions-Policy        no camera, microphone, geolocation, payment, USB
  Cross-Origin-Opener-Policy same-origin
  Strict-Transport-Security only on HTTPS requests (a plain-HTTP answer cannot set it anyway)

In production the session cookie is also `Secure` (CAPTIONARY_COOKIE_SECURE=false turns
that off for a deployment that really serves plain HTTP, e.g. behind a VPN).

`origin_allowed(request)` is the one Origin check, used by the websocket handshake
(game/web/ws.py) and the JSON POSTs (game/web/api.py): the page's own host, plus the origins
in CAPTIONARY_ALLOWED_ORIGINS. (It used to be written twice, and the POST copy ignored
the setting.)

`FrameBudget` is the websocket flood guard game/web/ws.py applies per connection
(CAPTIONARY_FRAME_RATE frames/s, bursts of CAPTIONARY_FRAME_BURST; 60 and 120 by default).
"""
from __future__ import annotations

import hmac
import secrets
from typing import Optional
from urllib.parse import urlsplit

from flask import current_app, g, request


def bearer_token(req) -> Optional[str]:
    """The token of an `Authorization: Bearer <token>` header, or None (admin scripts, /metrics scrapers)."""
    auth = req.headers.get("Authorization", "")
    return auth[len("Bearer "):] if auth.startswith("Bearer ") else None


def tokens_match(given: Optional[str], expected: Optional[str]) -> bool:
    """Constant-time comparison of a presented secret with the configured one; nothing matches an unset one."""
    if not given or not expected:
        return False
    return hmac.compare_digest(str(given).encode(), str(expected).encode())


def origin_allowed(req=None) -> bool:
    """Whether the request's Origin may act on this site: its own host or an allowed extra origin.

    No Origin header is allowed: browsers always send one on websocket handshakes and on
    cross-site POSTs, so its absence means a non-browser client, which a cookie check
    (not this one) has to stop. CAPTIONARY_ALLOWED_ORIGINS entries are full origins
    ("https://play.example.org") or bare hosts ("play.example.org:8443"); the comparison
    is exact, so "play.example.org.evil.example" is not "play.example.org".
    """
    req = req if req is not None else request
    origin = req.headers.get("Origin")
    if not origin:
        return True
    allowed = {req.host}
    extra = current_app.config.get("ALLOWED_ORIGINS") or ""
    if isinstance(extra, (list, tuple)):  # from_prefixed_env JSON-decodes a list
        extra = ",".join(map(str, extra))
    allowed.update(o.strip().rstrip("/") for o in str(extra).split(",") if o.strip())
    return urlsplit(origin).netloc in allowed or origin.rstrip("/") in allowed


def csp_nonce() -> str:
    """This request's nonce (made on first use; the CSP header names it only when a page used it)."""
    nonce = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(16)
    return nonce


def content_security_policy(nonce: str | None = None) -> str:
    style = "style-src 'self'" + (f" 'nonce-{nonce}'" if nonce else "")
    return ("default-src 'self'; script-src 'self'; " + style + "; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'")


HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _headers(response):
    # Set (not setdefault) the CSP: pages.py's older fixed policy runs after this one and
    # uses setdefault, and this one must also name the nonce when a template used it.
    if "Content-Security-Policy" not in response.headers or g.get("csp_nonce"):
        response.headers["Content-Security-Policy"] = content_security_policy(g.get("csp_nonce"))
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    return response


def init_app(app) -> None:
    # FRAME_RATE/FRAME_BURST and COOKIE_SECURE are checked (and the latter applied) in game/config.py.
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    app.after_request(_headers)


class FrameBudget:
    """A per-connection token bucket over raw websocket frames, checked before any parsing.

    The shared per-player draft bucket (Redis) answers `slow_down`, but a client flooding
    at 1,000 frames/s would still cost a JSON parse and a reply per frame, and a Redis round
    trip per batch, all on the process that serves other players. Frames beyond this
    budget are dropped unread; the client gets one `slow_down` notice per batch read (a
    flooder's frames arrive many to a batch) instead of a reply to each, so a client
    that waits for an answer to each message always gets one. The defaults (60 frames/s, bursts of 120) are several times what
    the play page sends while someone types (a draft per pause or word, plus pings).
    A client still sending more than 5x its budget after 3 s is marked `abusive` and the
    socket is closed with 1008 (policy violation).
    """

    ABUSE_WINDOW_S = 3.0  # a client that keeps sending ABUSE_FACTOR x its budget for this long is cut off
    ABUSE_FACTOR = 5.0

    def __init__(self, rate: float = 60.0, burst: float = 120.0, clock=None):
        import time
        self.rate, self.burst = float(rate), float(burst)
        self.clock = clock or time.monotonic
        self.tokens, self.stamp = self.burst, self.clock()
        self.window_start, self.window_dropped = self.stamp, 0
        self.abusive = False  # set once: the caller closes the socket (1008, policy violation)

    def admit(self, frames: list) -> tuple[list, int | None]:
        """(frames to handle, number dropped from this batch or None). Keeps the oldest frames."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        n = min(len(frames), int(self.tokens))
        self.tokens -= n
        # Even dropped unread, each frame costs the websocket layer some parsing; a client that
        # keeps flooding far past its budget is not a page (which never gets near it): cut it off.
        self.window_dropped += len(frames) - n
        if now - self.window_start >= self.ABUSE_WINDOW_S:
            limit = self.ABUSE_FACTOR * self.rate * (now - self.window_start)
            self.abusive = self.abusive or self.window_dropped > limit
            self.window_start, self.window_dropped = now, 0
        return frames[:n], (len(frames) - n) or None
