"""The read-only admin page: the pool as a gallery, score-vs-iteration plots, the job list.

Behind CAPTIONARY_ADMIN_TOKEN (unset: the page is off and answers 404; set: at
least 32 characters, checked at start-up). The token comes in an `X-Admin-Token`
or `Authorization: Bearer` header (scripts), or through the login form.

The login form is rate-limited per client address (CAPTIONARY_ADMIN_LOGIN_FAILURES
attempts a minute, a token bucket in Redis shared by every process; then 429).
A login sets the admin's own signed cookie, `captionary_admin` (path /admin,
HttpOnly, SameSite=Strict, 12 hours), separate from the player cookie: logging
in or out as admin never touches the player's session, and a stolen player
cookie carries no admin rights. The cookie holds an HMAC of the token, not the
token, so changing CAPTIONARY_ADMIN_TOKEN ends every admin session at once.
Comparisons are constant-time (`hmac.compare_digest`). Nothing here writes game
state: admins change things with the CLI (`flask --app game targets ...`).
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Optional

from flask import (Blueprint, Response, abort, current_app, jsonify, redirect, render_template, request,
                   url_for)
from itsdangerous import BadSignature, URLSafeTimedSerializer
from markupsafe import Markup

from game.web.security import bearer_token, tokens_match

bp = Blueprint("admin", __name__, url_prefix="/admin")
COOKIE_NAME = "captionary_admin"
COOKIE_MAX_AGE_S = 12 * 3600  # an admin logs in again every working day
LOGIN_WINDOW_S = 60.0  # ADMIN_LOGIN_FAILURES attempts refill over this many seconds
PAGE_SIZE = 60


def _token() -> Optional[str]:
    token = current_app.config.get("ADMIN_TOKEN")
    return str(token) if token else None


def _session_mac(token: str) -> str:
    # Bound to the app's secret and to the token: a leaked cookie does not reveal the
    # token, and a new token invalidates every cookie made for the old one.
    return hmac.new(str(current_app.secret_key).encode(), b"admin:" + token.encode(), hashlib.sha256).hexdigest()


def _serializer() -> URLSafeTimedSerializer:
    # Its own salt: a player cookie (signed with the same secret) never verifies as an admin one.
    return URLSafeTimedSerializer(current_app.secret_key, salt="captionary-admin-session")


def _presented() -> Optional[str]:
    header = request.headers.get("X-Admin-Token")
    if header:
        return header
    return bearer_token(request)


def _cookie_valid(token: str) -> bool:
    raw = request.cookies.get(COOKIE_NAME)
    if not raw:
        return False
    try:
        data = _serializer().loads(raw, max_age=COOKIE_MAX_AGE_S)
    except BadSignature:  # also SignatureExpired
        return False
    mac = data.get("mac") if isinstance(data, dict) else None
    return isinstance(mac, str) and hmac.compare_digest(mac.encode(), _session_mac(token).encode())


def is_admin() -> bool:
    token = _token()
    if token is None:
        return False
    presented = _presented()
    if presented is not None:
        return tokens_match(presented, token)
    return _cookie_valid(token)


@bp.before_request
def _guard():
    if _token() is None:
        abort(404)  # the page does not exist until an admin token is configured
    if request.endpoint in ("admin.login", "admin.static") or is_admin():
        return None
    if _presented() is not None or request.accept_mimetypes.best == "application/json":
        abort(403)
    return redirect(url_for("admin.login", next=request.full_path if request.query_string else request.path))


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def _login_allowed() -> bool:
    """One token of this address's login bucket (Redis, shared by all processes); False: wait."""
    per_minute = current_app.config["ADMIN_LOGIN_FAILURES"]
    key = f"admin-login:{request.remote_addr or 'unknown'}"
    return current_app.extensions["store"].take_token(key, per_minute / LOGIN_WINDOW_S, per_minute)


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        # Every attempt counts, a right one included: otherwise a guesser past the limit
        # could still learn which guess was right.
        if not _login_allowed():
            message = "Too many login attempts from this address; wait a minute and try again."
            if request.accept_mimetypes.best == "application/json":
                response = jsonify({"type": "error", "code": "slow_down", "message": message})
            else:
                response = Response(render_template("admin/login.html", error=message))
            response.status_code = 429
            response.headers["Retry-After"] = str(int(LOGIN_WINDOW_S))
            return response
        token = _token()
        given = request.form.get("token", "")
        if tokens_match(given, token):
            target = request.args.get("next") or ""
            # Only local paths: never an open redirect.
            response = redirect(target if target.startswith("/admin") and "//" not in target
                                else url_for("admin.gallery"))
            response.set_cookie(COOKIE_NAME, _serializer().dumps({"mac": _session_mac(token)}),
                                max_age=COOKIE_MAX_AGE_S, path="/admin", httponly=True, samesite="Strict",
                                secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")))
            return response
        error = "That token is not right."
    return render_template("admin/login.html", error=error), (401 if error else 200)


@bp.post("/logout")
def logout():
    response = redirect(url_for("admin.login"))
    response.delete_cookie(COOKIE_NAME, path="/admin", httponly=True, samesite="Strict",
                           secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")))
    return response


def history_svg(history, width: int = 240, height: int = 90, threshold: Optional[float] = None) -> Markup:
    """A small inline SVG line plot of (iteration, score) points; numbers only, so safe to inline."""
    points = [(float(i), float(s)) for i, s in (history or [])]
    if not points:
        return Markup('<span class="muted">no score history</span>')
    pad = 22
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    # The threshold joins the scale only when it is near the data; far away it would flatten the curve.
    off_scale = None
    if threshold is not None and not (lo - (hi - lo) <= threshold <= hi + (hi - lo)):
        off_scale, threshold = threshold, None
    elif threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def sx(x):
        return pad + (x - x0) / (x1 - x0) * (width - pad - 4)

    def sy(y):
        return 4 + (hi - y) / (hi - lo) * (height - pad - 4)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="self-score by iteration, from {ys[0]:.3f} to {ys[-1]:.3f}">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - 4}" y2="{height - pad}" class="axis"/>',
             f'<line x1="{pad}" y1="4" x2="{pad}" y2="{height - pad}" class="axis"/>']
    if threshold is not None:
        parts.append(f'<line x1="{pad}" y1="{sy(threshold):.1f}" x2="{width - 4}" y2="{sy(threshold):.1f}" '
                     f'class="threshold"><title>threshold {threshold:.3f}</title></line>')
    if off_scale is not None:
        where = "above" if off_scale > hi else "below"
        parts.append(f'<text x="{width / 2:.0f}" y="{height - 6}" class="tick" text-anchor="middle">'
                     f'threshold {off_scale:.2f} ({where})</text>')
    parts.append(f'<polyline points="{line}" class="line"/>')
    for x, y in points:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2"><title>it {int(x)}: {y:.4f}</title></circle>')
    parts += [f'<text x="2" y="10" class="tick">{hi:.2f}</text>',
              f'<text x="2" y="{height - pad}" class="tick">{lo:.2f}</text>',
              f'<text x="{pad}" y="{height - 6}" class="tick">{int(x0)}</text>',
              f'<text x="{width - 4}" y="{height - 6}" class="tick" text-anchor="end">{int(x1)} it</text>',
              "</svg>"]
    return Markup("".join(parts))


def _cfg() -> dict:
    from game.config import GENERATION_DEFAULTS, generation_settings
    from game.errors import AdminError
    try:
        return generation_settings(current_app.config)
    except AdminError:
        return dict(GENERATION_DEFAULTS)


@bp.get("/")
def gallery():
    store = current_app.extensions["store"]
    kind = request.args.get("kind") or None
    status = request.args.get("status") or None
    if kind not in (None, "gan", "photo") or status not in (None, "ready", "pending", "removed"):
        abort(400)
    targets = store.list_targets(kind=kind, status=status)
    cfg = _cfg()
    return render_template("admin/gallery.html", targets=targets[:PAGE_SIZE], total=len(targets), kind=kind,
                           status=status, model_id=store.model_id, threshold=cfg["GAN_MIN_SCORE"],
                           plot=history_svg, demo=current_app.config.get("DEMO_MODE"))


@bp.get("/target/<target_id>")
def target(target_id: str):
    store = current_app.extensions["store"]
    t = store.get_target(target_id)
    if t is None:
        abort(404)
    days = [d for d in store.days() if any(p.target_id == t.id for p in store.puzzles_for(d))]
    return render_template("admin/target.html", t=t, days=days, model_id=store.model_id,
                           plot=history_svg, threshold=_cfg()["GAN_MIN_SCORE"])


@bp.get("/image/<target_id>.png")
def image(target_id: str):
    try:
        data = current_app.extensions["store"].target_image(target_id)
    except KeyError:
        abort(404)
    return Response(data, mimetype="image/png")


@bp.get("/jobs")
def jobs():
    from game.generation.jobs import STATUSES, JobQueue
    from game.generation.heartbeats import live_workers
    client = current_app.extensions["redis"]
    queue = JobQueue(client)
    status = request.args.get("status") or None
    if status not in (None, *STATUSES):
        abort(400)
    return render_template("admin/jobs.html", jobs=queue.list_jobs(status=status, limit=200),
                           counts=queue.counts(), workers=live_workers(client), status=status, now=time.time())


def init_app(app) -> None:
    if "admin" not in app.blueprints:
        app.register_blueprint(bp)
