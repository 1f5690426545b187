"""Server-rendered pages: today, play, leaderboards, reveal, archive, how to play, nickname.

Every page knows the player from Flask's signed session cookie: a missing,
unsigned or forged cookie simply gives a fresh anonymous player (Flask drops
a session whose signature does not verify), never someone else. Jinja
autoescaping renders every caption and nickname as text; the only `|safe`
output is the histogram SVG, which this module builds from numbers alone.
"""
from __future__ import annotations

import re

import redis
from flask import (Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template,
                   request, session, url_for)
from werkzeug.exceptions import InternalServerError

from game import players
from game import puzzles as pz
from game.service import ProtocolError, board_entry, error, public_id
from game.web import connlimits

bp = Blueprint("views", __name__)
_TARGET_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SQUARES = 5


def current_player() -> str:
    """This browser's player id, creating an anonymous one (in the signed cookie) when needed."""
    pid = session.get("player")
    if not players.is_valid_player_id(pid):
        pid = players.new_player_id()
        session["player"] = pid
        session.permanent = True
    return pid


def _game():
    return current_app.extensions["game"]


def _store():
    return current_app.extensions["store"]


def _day(value: str) -> str:
    try:
        return pz.parse_date(value)
    except ValueError:
        abort(404, description=f"{value!r} is not a day (expected YYYY-MM-DD)")


@bp.before_app_request
def _assign_player():
    # Not on /ws (a websocket upgrade cannot set a cookie), static files, nor the health and
    # metrics endpoints (a load balancer's probes are not players, and must never get a 429).
    if request.blueprint in ("ws", "ops") or request.endpoint in (None, "static"):
        return None
    if not players.is_valid_player_id(session.get("player")):
        # New identities per address are rate-limited (game/web/connlimits.py): each has its own
        # draft, submission and cap budgets, so a client dropping its cookie would reset them.
        if not connlimits.may_mint_player(current_app, connlimits.client_address(request)):
            connlimits.count_refusal(current_app, "new_player", "too_many_new_players")
            resp = jsonify(error("too_many_new_players", "too many new players from your network right "
                                 "now; keep this browser's cookie, or try again in a minute"))
            resp.status_code, resp.headers["Retry-After"] = 429, "30"
            return resp
    current_player()
    return None


@bp.app_context_processor
def _page_context():
    pid = session.get("player")
    try:
        name = _store().display_name(pid) if players.is_valid_player_id(pid) else ""
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        name = ""  # the "database unavailable" page must still render
    return {"today": _store().today(), "public_player": public_id(pid) if pid else "", "my_name": name}


@bp.route("/")
def today():
    store, pid = _store(), current_player()
    day = store.today()
    cards = []
    for puzzle in store.puzzles_for(day):
        target = store.get_target(puzzle.target_id)
        cards.append({"puzzle": puzzle, "kind": puzzle.kind, "best": store.best(pid, puzzle.id),
                      "rank": store.rank(pid, puzzle.id),
                      "machine": target.self_score if target and puzzle.kind == "gan" else None})
    return render_template("today.html", day=day, cards=cards, share_text=share_text(day, cards, request.host_url),
                           total=store.daily_total(pid, day), daily_rank=store.daily_rank(pid, day))


def share_text(day: str, cards: list[dict], url: str) -> str:
    """Spoiler-free: scores and squares per puzzle, beat-the-machine count; never a caption."""
    lines = [f"Captionary {day}"]
    machines = beaten = 0
    for card in cards:
        best = card["best"]
        machines += card["machine"] is not None
        if best is None:
            lines.append("⬛" * SQUARES + " –")
            continue
        # 0.17 -> one square ... 0.45 -> five: the range good human captions land in.
        filled = max(0, min(SQUARES, round((best - 0.10) / 0.07)))
        mark = ""
        if card["machine"] is not None and best > card["machine"]:
            beaten += 1
            mark = " 🤖✗"
        lines.append("🟩" * filled + "⬜" * (SQUARES - filled) + f" {best:.4f}{mark}")
    if machines:
        lines.append(f"Beat the machine: {beaten}/{machines}")
    if current_app.config["DEMO_MODE"]:
        lines.append("(demo mode: random judge)")
    lines.append(url)
    return "\n".join(lines)


@bp.route("/play/<day>/<int:n>")
def play(day, n):
    day, game, pid = _day(day), _game(), current_player()
    try:
        puzzle, ranked = game.puzzle(pz.puzzle_id(day, n))
    except ProtocolError as exc:
        abort(404, description=exc.message)
    state = game.puzzle_state(pid, puzzle, ranked)
    board = game.board(puzzle.id, viewer=pid)
    target = _store().get_target(puzzle.target_id)
    return render_template("play.html", puzzle=puzzle, ranked=ranked, state=state, board=board, target=target)


@bp.route("/leaderboard")
def leaderboard_today():
    return redirect(url_for("views.leaderboard", day=_store().today()))


@bp.route("/leaderboard/<day>")
def leaderboard(day):
    day, store, game, pid = _day(day), _store(), _game(), current_player()
    state = store.day_state(day)
    if state == "future":
        abort(404, description=f"{day} has not started yet")
    puzzles = store.puzzles_for(day) if state == "today" else _past_puzzles(day)
    if not puzzles:
        abort(404, description=f"{day} was not a puzzle day")
    boards = [game.board(p.id, viewer=pid) for p in puzzles]
    daily = [board_entry(e, pid) for e in store.daily_leaderboard(day)]
    return render_template("leaderboard.html", day=day, ranked=state == "today", boards=boards, daily=daily)


def _past_puzzles(day: str):
    # Only days that were actually frozen (played or shown): browsing never invents a past day.
    return _store().puzzles_for(day) if day in set(_store().days()) else []


@bp.route("/reveal/<day>")
def reveal(day):
    day, store = _day(day), _store()
    if store.day_state(day) != "past":
        flash("Captions are revealed when the day ends (00:00 UTC). Here is the live board.", "info")
        return redirect(url_for("views.leaderboard", day=day))
    reveals = []
    for puzzle in _past_puzzles(day):
        r = store.reveal(puzzle.id)
        reveals.append({"index": puzzle.index, "target_id": puzzle.target_id,
                        "machine_prompt": r.prompt if r.kind == "gan" else None, "machine_score": r.self_score,
                        "beat_machine": r.beat_machine or 0, "players": r.players,
                        "top": [board_entry(e) for e in r.top],
                        "histogram": histogram_svg(r.best_scores, r.self_score if r.kind == "gan" else None)})
    if not reveals:
        abort(404, description=f"nobody played on {day}")
    return render_template("reveal.html", day=day, reveals=reveals)


def histogram_svg(scores: list[float], machine: float | None = None, bins: int = 12) -> str:
    """An accessible SVG histogram of best scores; numbers only, so it is safe to inline."""
    if not scores:
        return ""
    values = list(scores) + ([machine] if machine is not None else [])
    lo, hi = min(values), max(values)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    width, height, pad = 480, 200, 28
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, int((s - lo) / (hi - lo) * bins))] += 1
    top = max(counts)
    bar_w = (width - 2 * pad) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Histogram of {len(scores)} best scores from {lo:.4f} to {hi:.4f}">',
             f"<title>Best scores: {len(scores)} players, {min(scores):.4f} to {max(scores):.4f}</title>"]
    for i, c in enumerate(counts):
        h = (height - 2 * pad) * c / top
        x, y = pad + i * bar_w, height - pad - h
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="currentColor" '
                     f'opacity="0.75"><title>{c} player{"s" if c != 1 else ""}: '
                     f'{lo + i * (hi - lo) / bins:.4f} to {lo + (i + 1) * (hi - lo) / bins:.4f}</title></rect>')
    parts.append(f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="currentColor"/>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="12" fill="currentColor">{lo:.3f}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - 8}" font-size="12" fill="currentColor" '
                 f'text-anchor="end">{hi:.3f}</text>')
    if machine is not None:
        mx = pad + (machine - lo) / (hi - lo) * (width - 2 * pad)
        parts.append(f'<line x1="{mx:.1f}" y1="{pad - 10}" x2="{mx:.1f}" y2="{height - pad}" stroke="currentColor" '
                     f'stroke-width="2" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{mx:.1f}" y="{pad - 14}" font-size="12" fill="currentColor" text-anchor="middle">'
                     f'machine {machine:.4f}</text>')
    parts.append("</svg>")
    return "".join(parts)


@bp.route("/archive")
def archive():
    store = _store()
    today_ = store.today()
    days = [{"day": d, "puzzles": store.puzzles_for(d)} for d in reversed(store.days()) if d < today_]
    return render_template("archive.html", days=days)


@bp.route("/how")
def how():
    return render_template("how.html")


@bp.route("/nickname", methods=["GET", "POST"])
def nickname():
    store, pid = _store(), current_player()
    error, status = None, 200
    current = store.nickname(pid)
    if request.method == "POST":
        value = request.form.get("nickname", "")
        try:
            saved = store.set_nickname(pid, value)
        except ValueError as exc:  # the rules, or NicknameTaken (409: the name is fine, just held)
            error, current = str(exc), value
            status = 409 if getattr(exc, "code", None) == "nickname_taken" else 400
        else:
            flash(f"Your nickname is now {saved}.", "ok")
            return redirect(url_for("views.today"))
    # The limits come from game/players.py, so the form can never promise more than the rule allows.
    return render_template("nickname.html", current=current, error=error, min_len=players.NICKNAME_MIN,
                           max_len=players.NICKNAME_MAX), status


@bp.route("/target/<target_id>.png")
def target_image(target_id):
    """A target's picture, once players have been shown it (today's puzzles, past puzzle days).
    The rest of the pool answers 404 like an unknown id: tomorrow's pictures stay unseen, and
    admins see them under /admin/."""
    if not _TARGET_ID.match(target_id) or not _game().image_is_public(target_id):
        abort(404, description="no such image")
    try:
        data = _store().public_target_image(target_id)
    except KeyError:
        abort(404, description="no such image")
    resp = Response(data, mimetype="image/png")
    resp.headers["Cache-Control"] = "public, max-age=86400, immutable"  # a target id never changes its image
    return resp


def _error_page(exc):
    titles = {404: "Not found", 400: "Bad request", 405: "Not allowed", 413: "Too large",
              500: "Something went wrong"}
    code = getattr(exc, "code", 500) or 500
    message = getattr(exc, "description", None) or "Something went wrong."
    if code == 500:  # never show internals; the log has the traceback
        message = "Something went wrong on our side; please try again in a moment."
    if request.path.startswith("/api/") or request.path == "/ws":
        codes = {404: "not_found", 400: "bad_request", 405: "bad_method", 413: "too_big", 500: "internal"}
        return jsonify(error(codes.get(code, "error"), message)), code
    return render_template("error.html", title=titles.get(code, "Error"), message=message), code


UNAVAILABLE_MESSAGE = ("The game's database is briefly unavailable, so your last action was not recorded. "
                       "Please try again in a few seconds.")


def _database_unavailable(exc):
    """Redis down or unreachable: a 503 the page and API clients retry, never a 500."""
    current_app.logger.warning("redis unavailable during %s %s: %s", request.method, request.path, exc)
    resp = _storage_error("unavailable", "Back in a moment", UNAVAILABLE_MESSAGE, 503)
    resp.headers["Retry-After"] = "5"
    return resp


def _storage_error(code: str, title: str, message: str, status: int):
    """The store could not do it: JSON for the API and the socket's handshake, a page for browsers."""
    if request.path.startswith("/api/") or request.path == "/ws":
        resp = jsonify(error(code, message))
    else:
        resp = current_app.make_response((render_template("error.html", title=title, message=message), status))
    resp.status_code = status
    return resp


STORAGE_FULL_MESSAGE = ("The game's storage is full, so your last action was not recorded (everything recorded "
                        "before is safe). Please try again later.")


def _storage_full(exc):
    """Redis at maxmemory (noeviction) refused a write: 507 "storage full", never a 500.

    Any other error reply from Redis is a bug: logged with its traceback, shown as a 500.
    """
    from game.store.server import is_out_of_memory
    if not is_out_of_memory(exc):
        current_app.logger.error("redis error during %s %s", request.method, request.path, exc_info=exc)
        return _error_page(InternalServerError())
    current_app.logger.error("redis storage full (maxmemory) during %s %s", request.method, request.path)
    return _storage_error("storage_full", "Storage full", STORAGE_FULL_MESSAGE, 507)


def init_app(app) -> None:
    app.register_blueprint(bp)
    app.register_error_handler(redis.exceptions.ConnectionError, _database_unavailable)
    app.register_error_handler(redis.exceptions.TimeoutError, _database_unavailable)
    app.register_error_handler(redis.exceptions.ResponseError, _storage_full)
    # Security headers (CSP, nosniff, framing) come from game/web/security.py for every response.
    for code in (400, 404, 405, 413, 500):
        app.register_error_handler(code, _error_page)
