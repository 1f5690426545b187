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
"""
from __future__ import annotations

import secrets

from flask import g, request


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
    # Set (not setdefault) the CSP: views.py's older fixed policy runs after this one and
    # uses setdefault, and this one must also name the nonce when a template used it.
    if "Content-Security-Policy" not in response.headers or g.get("csp_nonce"):
        response.headers["Content-Security-Policy"] = content_security_policy(g.get("csp_nonce"))
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    return response


def init_app(app) -> None:
    from game.config import _as_bool
    if app.config.get("ENV") == "production":
        app.config["SESSION_COOKIE_SECURE"] = _as_bool(app.config.get("COOKIE_SECURE", True))
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    app.after_request(_headers)
