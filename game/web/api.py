"""HTTP JSON endpoints: the websocket's actions for networks that block websockets, plus status.

  GET  /api/status                 model id, is_pretrained, demo mode, today
  GET  /api/state?puzzle=ID        the player's state (and the puzzle's, if given)
  POST /api/draft    {puzzle, caption, seq?}   -> score
  POST /api/submit   {puzzle, caption}         -> result
  POST /api/hint     {puzzle}                  -> hint
  POST /api/nickname {nickname}                -> {type: "nickname", nickname}
                                   (error bad_nickname 400, or nickname_taken 409 for a look-alike of a held name)
  GET  /api/board?puzzle=ID        the puzzle's leaderboard
  GET  /api/daily?date=YYYY-MM-DD  the day's leaderboard

Bodies go through the same `validate_message` as websocket frames, and replies
are the same messages. POSTs must be `application/json` (a cross-site form
cannot send that without a CORS preflight, which we never grant) and, when
the browser sends an Origin, come from this site or CAPTIONARY_ALLOWED_ORIGINS
(`security.origin_allowed`, the websocket's check too).
"""
from __future__ import annotations

import json

from flask import Blueprint, current_app, jsonify, request

from game import puzzles as pz
from game.service import ProtocolError, board_entry, public_id, validate_message
from game.web.pages import current_player
from game.web.security import origin_allowed

bp = Blueprint("api", __name__, url_prefix="/api")

STATUS_FOR = {"unknown_puzzle": 404, "not_found": 404, "not_yet": 404, "over_cap": 409, "not_today": 409,
              "nickname_taken": 409, "slow_down": 429, "busy": 503, "too_big": 413, "no_hint": 404,
              "bad_origin": 403, "storage_full": 507, "too_many_new_players": 429, "too_many_connections": 429}


def json_reply(message: dict, status_for: dict = STATUS_FOR):
    """A protocol message as an HTTP response: errors get their status from `status_for` (400
    by default), 429 a Retry-After."""
    status = 200
    if message.get("type") == "error":
        status = status_for.get(message["code"], 400)
    resp = jsonify(message)
    resp.status_code = status
    if status == 429:
        resp.headers["Retry-After"] = "1"
    return resp


def json_body() -> dict:
    """The request's JSON object, checked as a websocket frame is: same origin, size limit and
    error codes (every JSON POST of the game reads its body through this)."""
    if not origin_allowed(request):  # the websocket's check too (game/web/security.py): one rule
        raise ProtocolError("bad_origin", "requests from other sites are refused")
    if not request.is_json:
        raise ProtocolError("bad_json", "send a JSON body with Content-Type: application/json")
    raw = request.get_data(cache=False)
    limit = current_app.config["MAX_FRAME_BYTES"] + 64  # the websocket frame limit, plus room for "type"
    if len(raw) > limit:
        raise ProtocolError("too_big", f"message of {len(raw)} bytes is over the {limit}-byte limit")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "that body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError("bad_message", "the body must be a JSON object")
    return body


def _action(kind: str) -> dict:
    """Parse the JSON body as a `kind` message (same validation as a websocket frame)."""
    body = json_body()
    body["type"] = kind
    if kind == "draft":
        body.setdefault("seq", 0)
    return validate_message(body)


def _run(fn):
    try:
        return json_reply(fn())
    except ProtocolError as exc:
        return json_reply(exc.reply())


def _game():
    return current_app.extensions["game"]


@bp.get("/status")
def status():
    judge, store = current_app.extensions["judge"], current_app.extensions["store"]
    return jsonify({"type": "status", "model_id": judge.model_id, "is_pretrained": judge.is_pretrained,
                    "demo_mode": judge.demo_mode, "demo_reason": judge.demo_reason, "today": store.today(),
                    "puzzles_per_day": store.puzzles_per_day, "max_submissions": store.max_submissions,
                    "max_caption_chars": current_app.config["MAX_CAPTION_CHARS"]})


@bp.get("/state")
def state():
    return _run(lambda: _game().state(current_player(), request.args.get("puzzle") or None))


@bp.post("/draft")
def draft():
    return _run(lambda: _game().draft(current_player(), _action("draft")))


@bp.post("/submit")
def submit():
    return _run(lambda: _game().submit(current_player(), _action("submit")))


@bp.post("/hint")
def hint():
    return _run(lambda: _game().hint(current_player(), _action("hint")))


@bp.post("/nickname")
def nickname():
    def run():
        body = _action("hello")
        value = body.get("nickname")
        if not isinstance(value, str):
            raise ProtocolError("missing_field", "send {\"nickname\": \"...\"}")
        try:
            saved = current_app.extensions["store"].set_nickname(current_player(), value)
        except ValueError as exc:  # NicknameTaken carries its own code
            raise ProtocolError(getattr(exc, "code", "bad_nickname"), str(exc)) from None
        return {"type": "nickname", "nickname": saved}
    return _run(run)


@bp.get("/board")
def board():
    puzzle = request.args.get("puzzle", "")
    return _run(lambda: _game().board(puzzle, viewer=current_player()))


@bp.get("/daily")
def daily():
    def run():
        store = current_app.extensions["store"]
        try:
            day = pz.parse_date(request.args.get("date") or store.today())
        except ValueError as exc:
            raise ProtocolError("bad_field", str(exc)) from None
        pid = current_player()
        return {"type": "daily", "date": day, "player": public_id(pid),
                "entries": [board_entry(e, pid) for e in store.daily_leaderboard(day)]}
    return _run(run)


def init_app(app) -> None:
    app.register_blueprint(bp)
