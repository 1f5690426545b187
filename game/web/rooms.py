"""Play with friends on the web: the pages (create, join by code, the room), the round pictures,
the room link's QR code, the room's state as JSON (the page's HTTP fallback), and the websocket
side of rooms (room messages, the room hub, the ticker).

The room page is server-rendered and driven by static/room.js over the same /ws as the
daily game. Each web process runs one room hub (a BoardHub on the cap:roomev:* channels)
and, while any of its sockets sits in a room, one ticker thread that ends rounds on the
server's clock and sends throttled live bars; all state stays in Redis (game/store/rooms.py).
"""
from __future__ import annotations

import io
import logging
import threading
import time

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for

from game.service import ProtocolError, public_id
from game.store.rooms import CODE_LENGTH, MAX_ROUNDS, ROUND_SECONDS, SOURCES, RoomError, RoomStore
from game.web.pages import current_player

log = logging.getLogger("captionary.rooms")
bp = Blueprint("rooms", __name__, url_prefix="/rooms")
TICK_S = 0.1  # how often a process checks its rooms' timers (the countdown's resolution at the server)


# -- pages --------------------------------------------------------------------------------------------

def _rooms():
    return current_app.extensions["rooms"]


@bp.route("/", methods=["GET"])
def start():
    """"Play with friends": create a room, or join one by its code."""
    from game.rooms import DEFAULT_ROUNDS, DEFAULT_SECONDS, SOURCE_LABELS
    code = request.args.get("code", "").strip()
    error = None
    if code:
        try:
            normalized = RoomStore.normalize_code(code)
        except RoomError as exc:
            error = exc.message
        else:
            if _rooms().rooms.exists(normalized):
                return redirect(url_for("rooms.room", code=normalized))
            error = f"there is no room {normalized} (it may have expired)"
    counts = _rooms().source_counts()
    return render_template("rooms_new.html", counts=counts, labels=SOURCE_LABELS, sources=SOURCES,
                           chosen=preselected_source(counts, DEFAULT_ROUNDS), rounds=DEFAULT_ROUNDS,
                           seconds=DEFAULT_SECONDS, max_rounds=MAX_ROUNDS,
                           min_seconds=ROUND_SECONDS[0], max_seconds=ROUND_SECONDS[1], code_length=CODE_LENGTH,
                           error=error, code=code), 404 if error else 200


def preselected_source(counts: dict, rounds: int) -> str:
    """The source the form offers first: the first (in SOURCES order) with pictures for `rounds` rounds,
    else the one with the most, so the default game can start without the host changing anything."""
    enough = [s for s in SOURCES if counts.get(s, 0) >= rounds]
    return enough[0] if enough else max(SOURCES, key=lambda s: counts.get(s, 0))


@bp.route("/", methods=["POST"])
def create():
    """The create form: the same rules as a room_create message, a room, then the room page."""
    from game.web.security import origin_allowed
    if not origin_allowed(request):
        abort(403, description="forms from other sites are refused")
    form = request.form
    msg = {"type": "room_create", "nickname": form.get("nickname", ""), "source": form.get("source", "archive")}
    for field in ("rounds", "seconds"):
        value = form.get(field, "").strip()
        if not value.isdigit():
            return _create_error(f"{field} must be a whole number")
        msg[field] = int(value)
    try:
        reply = _rooms().create(current_player(), msg)
    except ProtocolError as exc:
        return _create_error(exc.message, 409 if exc.code == "nickname_taken" else 400)
    return redirect(url_for("rooms.room", code=reply["room"]))


def _create_error(message: str, status: int = 400):
    from game.rooms import DEFAULT_ROUNDS, DEFAULT_SECONDS, SOURCE_LABELS
    counts = _rooms().source_counts()
    asked = request.form.get("source")
    return render_template("rooms_new.html", counts=counts, labels=SOURCE_LABELS, sources=SOURCES,
                           chosen=asked if asked in SOURCES else preselected_source(counts, DEFAULT_ROUNDS),
                           rounds=request.form.get("rounds", DEFAULT_ROUNDS),
                           seconds=request.form.get("seconds", DEFAULT_SECONDS), max_rounds=MAX_ROUNDS,
                           min_seconds=ROUND_SECONDS[0], max_seconds=ROUND_SECONDS[1], code_length=CODE_LENGTH,
                           error=message, code=""), status


def _room_or_404(code: str) -> str:
    try:
        code = RoomStore.normalize_code(code)
    except RoomError as exc:
        abort(404, description=exc.message)
    if not _rooms().rooms.exists(code):
        abort(404, description=f"there is no room {code} (it may have expired)")
    return code


@bp.route("/<code>")
def room(code):
    code = _room_or_404(code)
    if code != request.view_args["code"]:
        return redirect(url_for("rooms.room", code=code))
    pid = current_player()
    state = _rooms().state(code)
    me = public_id(pid)
    member = next((p for p in state["players"] if p["player"] == me), None)
    link = url_for("rooms.room", code=code, _external=True)
    return render_template("room.html", code=code, state=state, member=member, link=link,
                           nickname=current_app.extensions["store"].nickname(pid) or "")


@bp.route("/<code>/state")
def state_json(code):
    """The room's snapshot as JSON, the same as the `room` message on /ws: the room page polls it while its
    websocket cannot connect (HTTP fallback), so the countdown, seats, reveal and podium keep coming."""
    from flask import jsonify
    try:
        code = RoomStore.normalize_code(code)
        state = _rooms().state(code)
    except RoomError as exc:
        state, message = None, exc.message
    else:
        message = f"there is no room {code} (it may have expired)"
    if state is None:
        resp = jsonify({"type": "error", "code": "unknown_room", "message": message})
        resp.status_code = 404
    else:
        resp = jsonify(state)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route("/<code>/picture/<int:game>-<int:number>.png")
def picture(code, game, number):
    """A round's picture, once that round has begun (never the pictures still to come)."""
    target = _rooms().round_picture(code, game, number)
    if target is None:
        abort(404, description="no such picture")
    try:
        data = current_app.extensions["store"].target_image(target)
    except KeyError:
        abort(404, description="no such picture")
    resp = Response(data, mimetype="image/png")
    resp.headers["Cache-Control"] = "private, max-age=3600"
    return resp


@bp.route("/<code>/qr.svg")
def qr(code):
    """The room's link as a QR code, for a phone in the same room."""
    import segno
    code = _room_or_404(code)
    out = io.BytesIO()
    segno.make(url_for("rooms.room", code=code, _external=True), error="m").save(
        out, kind="svg", scale=6, border=2, title=f"QR code of the link to room {code}")
    resp = Response(out.getvalue(), mimetype="image/svg+xml")
    resp.headers["Cache-Control"] = "private, max-age=3600"
    return resp


# -- the websocket side -------------------------------------------------------------------------------

def dispatch(app, conn, msg: dict) -> dict:
    """One room message from a socket (game/web/ws.py); the reply, with pushes queued on `conn`."""
    rooms, kind, pid = app.extensions["rooms"], msg["type"], conn.player_id
    if kind == "room_create":
        return rooms.create(pid, msg)
    if kind == "room_join":
        if conn.room_codes:
            raise ProtocolError("already_joined", f"this connection is already in room {next(iter(conn.room_codes))}; "
                                                  "leave it first")
        code, reply = rooms.join(pid, msg)
        # Subscribed before the snapshot is read, so no change after it is missed.
        app.extensions["room_hub"].subscribe(conn, [code])
        rooms.rooms.presence(code, pid, +1)
        app.extensions["room_ticker"].ensure_running()
        # Everyone, this socket included (through the hub), gets the snapshot with the seat taken and online;
        # it may arrive before or after this reply.
        rooms.publish(code)
        return reply
    if kind == "room_draft":
        reply = rooms.draft(pid, msg)
        conn.streams.add(rooms.stream(pid, reply["room"]))
        if rooms.pending_bars:  # a bar held back by the throttle goes out when the window ends, even if
            app.extensions["room_ticker"].ensure_running()  # this socket never joined the room here
        return reply
    if kind == "room_lock":
        return rooms.lock(pid, msg)
    reply = rooms.host_action(pid, msg)
    if kind == "room_leave" and reply["room"] in conn.room_codes:
        _leave(app, conn, reply["room"])
    return reply


def _leave(app, conn, code: str) -> None:
    app.extensions["room_hub"].remove(conn)
    rooms = app.extensions["rooms"]
    try:
        if rooms.rooms.presence(code, conn.player_id, -1) >= 0:
            rooms.publish(code)  # everyone sees the seat go offline
    except Exception:  # Redis gone while a socket closes: the room's keys expire on their own
        log.warning("could not record %s leaving room %s", public_id(conn.player_id), code, exc_info=True)


def socket_closed(app, conn) -> None:
    """A socket ended: its room seat goes offline (the seat stays for a reconnect)."""
    for code in list(conn.room_codes):
        _leave(app, conn, code)


class RoomTicker:
    """One thread per process, alive while some socket here sits in a room: ends rounds whose time is
    up (the server's clock), hands on the role of a host who left, and sends held-back bars."""

    def __init__(self, rooms, hub):
        self.rooms, self.hub = rooms, hub
        self._lock = threading.Lock()
        self._thread = None

    def ensure_running(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="captionary-room-ticker", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        next_tick = 0.0
        while True:
            channels = self.hub.channels()
            with self._lock:
                if not channels and not self.rooms.pending_bars:
                    self._thread = None
                    return
            try:
                self.rooms.flush_pending_bars()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    self.rooms.tick_all([channel.rsplit(":", 1)[1] for channel in channels])
            except Exception as exc:  # Redis blipped: keep ticking, the next pass retries
                log.warning("room ticker: %s", exc)
                time.sleep(0.5)
            self.rooms.wait_for_pending_bars(until=next_tick)  # the next held-back bar's time, or the next tick


def init_hub(app, hub_class) -> None:
    """The room hub (a BoardHub on the rooms' channels) and the ticker; called by game/web/ws.py."""
    hub = hub_class(app.extensions["redis"], RoomStore.channel("*"), RoomStore.channel, attr="room_codes")
    app.extensions["room_hub"] = hub
    app.extensions["room_ticker"] = RoomTicker(app.extensions["rooms"], hub)


def init_app(app) -> None:
    app.register_blueprint(bp)
