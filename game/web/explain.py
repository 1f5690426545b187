"""HTTP JSON endpoints for explanations (game/explain.py), in the style of game/web/api.py:

  POST /api/explain/words    {puzzle | target (+ room), caption}
       -> {type: "words", puzzle | target, caption, score, words: [{word, effect}]}
  POST /api/explain/heatmap  {puzzle | target (+ room), caption}
       -> {type: "heatmap", puzzle | target, caption, rows, cols, grid, score}

Same body rules as the other POSTs (JSON content type, same-site Origin, the
frame size limit) and the same error replies {type: "error", code, message};
new codes: not_submitted (403), running_day (409), pool_target (403); with a
room (a room's finished round, game/rooms.py): unknown_room (404), not_in_room
(403), round_running (409). Over
HTTP rather than the websocket: an explanation is a click, not a stream, and the
reveal page has no socket.
"""
from __future__ import annotations

from flask import Blueprint, current_app

from game.service import ProtocolError
from game.web.api import STATUS_FOR, json_body, json_reply
from game.web.pages import current_player

bp = Blueprint("explain", __name__, url_prefix="/api/explain")

STATUS = dict(STATUS_FOR, not_submitted=403, running_day=409, pool_target=403, unknown_room=404,
              not_in_room=403, round_running=409)


def _body() -> dict:
    body = json_body()
    if ("puzzle" in body) == ("target" in body):
        raise ProtocolError("missing_field", "send exactly one of \"puzzle\" or \"target\", and a \"caption\"")
    if "room" in body and "target" not in body:
        raise ProtocolError("missing_field", "a room's round is explained by its \"target\" (from the reveal)")
    if "caption" not in body:
        raise ProtocolError("missing_field", "an explanation needs a \"caption\"")
    for field in ("puzzle", "target", "room", "caption"):
        if field in body and not isinstance(body[field], str):
            raise ProtocolError("bad_field", f"\"{field}\" must be a string")
    return body


def _run(action):
    try:
        return json_reply(action(current_player(), _body()), STATUS)
    except ProtocolError as exc:
        return json_reply(exc.reply(), STATUS)


@bp.post("/words")
def words():
    return _run(current_app.extensions["explainer"].words)


@bp.post("/heatmap")
def heatmap():
    return _run(current_app.extensions["explainer"].heatmap)


def init_app(app) -> None:
    from game.explain import Explainer
    game = app.extensions["game"]
    app.extensions["explainer"] = Explainer(game, rate=(app.config["SUBMIT_RATE"], app.config["SUBMIT_BURST"]),
                                            rooms=app.extensions.get("rooms"))
    app.register_blueprint(bp)
