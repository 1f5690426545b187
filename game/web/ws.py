"""The websocket endpoint (/ws, flask-sock): parse, call `game.service`, send JSON. Thin on purpose.

Per connection: the player id comes from the same signed session cookie as
the pages (no cookie -> 401 before the upgrade); the handshake's Origin must
be this site's (or CAPTIONARY_ALLOWED_ORIGINS), else 403. Messages that
arrive while a draft is being scored are read as one batch; drafts overtaken
by a newer draft in the batch get `dropped` instead of a score. Board pushes
arrive from Redis pub/sub through `BoardHub`: one subscriber thread per
process fans out to this process's sockets, so a submission on any web
process reaches every browser watching that puzzle. Room messages (`room_*`) go to
game/web/rooms.py, whose room hub is a second BoardHub on the rooms' channels.
"""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import socket
import struct
import threading
import time

import redis
from flask import Blueprint, current_app, g, jsonify, request, session
from flask_sock import Sock
from wsproto.events import TextMessage

from game.service import ProtocolError, error, parse_message
from game.store.server import is_out_of_memory
from game.web.connlimits import RENEW_S, TooManyConnections, client_address, count_refusal
from game.web import rooms as room_ws
from game.web.security import FrameBudget, origin_allowed

log = logging.getLogger("captionary.ws")
bp = Blueprint("ws", __name__)
sock = Sock()

# A frame this large is closed by the websocket layer itself (1009); anything
# between MAX_FRAME_BYTES and this gets a "too_big" error and the socket stays open.
HARD_FRAME_LIMIT = 1 << 20
MAX_BATCH = 64  # frames read before answering: a flooding client cannot make one batch grow forever


_STOP = object()  # outbox item: the sender exits


class Connection:
    """One socket: its outbox and sender thread, its subscriptions and its slot under the caps.

    Every message to the client (replies from the handler thread, board pushes from the hub
    thread) goes into a bounded outbox that only this connection's sender thread drains, so
    no shared thread ever waits on one client's socket. The sender writes with a send
    timeout (SO_SNDTIMEO on the raw socket). A client that does not read (outbox full, or a
    write timed out) is abandoned: its socket is shut down, the handler ends and frees its
    slot, and everybody else's pushes go on. The sender also renews the socket's lease
    under the connection caps (game/web/connlimits.py) while it lives.
    """

    def __init__(self, ws, player_id: str, *, outbox: int = 64, send_timeout: float = 10.0,
                 renew=None, renew_every: float = 30.0):
        self.ws, self.player_id = ws, player_id
        self.puzzles: set[str] = set()  # subscribed boards
        self.room_codes: set[str] = set()  # the room this socket joined (its channel in the room hub)
        self.streams: set[str] = set()  # scorer streams this socket drafted on (freed on close)
        self.closing = False  # a close was queued (or the client abandoned): nothing more is queued
        self.abandoned = False
        self._outbox: queue.Queue = queue.Queue(maxsize=outbox)
        self.send_timeout = send_timeout
        self._renew, self._renew_every = renew, renew_every
        self._sender = None

    def start(self) -> None:
        """Set the socket's send timeout and start the sender thread."""
        sock = getattr(self.ws, "sock", None)
        if sock is not None:
            sec = int(self.send_timeout)
            usec = int((self.send_timeout - sec) * 1e6)
            try:  # only sends time out; the websocket's reader thread keeps blocking reads
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", sec, usec))
            except OSError:
                pass
        self._sender = threading.Thread(target=self._run, name="captionary-ws-sender", daemon=True)
        self._sender.start()

    def send(self, message: dict) -> bool:
        """Queue a message; False when the socket is closing or its client stopped reading."""
        return self.send_text(json.dumps(message, separators=(",", ":")))

    def send_text(self, text: str) -> bool:
        """`send` for a message already encoded as JSON (a board push goes to every watcher as is)."""
        if self.closing:
            return False
        try:
            self._outbox.put_nowait(text)
            return True
        except queue.Full:
            self.abandon(f"its outbox of {self._outbox.maxsize} messages is full")
            return False

    def close(self, code: int, reason: str) -> None:
        """Close after everything queued so far has been sent (replies in flight are not lost)."""
        if self.closing:
            return
        try:
            self._outbox.put_nowait(("close", code, reason))
        except queue.Full:
            self.abandon(f"its outbox of {self._outbox.maxsize} messages is full")
        self.closing = True

    def finish(self, wait: float = 2.0) -> None:
        """The handler is done: let the sender flush briefly, then stop it."""
        self.closing = True
        try:
            self._outbox.put_nowait(_STOP)
        except queue.Full:
            self.abandon("it did not read its last messages")
        if self._sender is not None and self._sender is not threading.current_thread():
            self._sender.join(wait)
            if self._sender.is_alive():
                self.abandon(f"its last messages were not read within {wait:.0f}s")

    def abandon(self, why: str) -> None:
        """Give up on a client that does not read: shut the socket down, waking every thread on it."""
        if self.abandoned:
            return
        self.abandoned = self.closing = True
        log.info("closing a websocket whose client is not reading (%s)", why)
        sock = getattr(self.ws, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        event = getattr(self.ws, "event", None)
        if event is not None:  # the handler blocked in receive() sees the socket closed and returns
            event.set()

    def _write(self, text: str) -> None:
        """Send one text frame in full within send_timeout, or raise.

        simple_websocket's send() makes one sock.send() call and ignores a partial write; with
        SO_SNDTIMEO a stalled client makes exactly that happen (part of a frame sent, the rest
        silently dropped). So frames are built by its wsproto connection, as send() does, and
        written here until done or the deadline passes.
        """
        ws = self.ws
        proto, sock = getattr(ws, "ws", None), getattr(ws, "sock", None)
        if proto is None or sock is None:  # not a simple_websocket connection
            ws.send(text)
            return
        if not ws.connected:
            raise ConnectionError("the websocket is closed")
        out = memoryview(proto.send(TextMessage(data=text)))
        deadline = time.monotonic() + self.send_timeout
        while out:
            if time.monotonic() > deadline:
                raise TimeoutError(f"a message was not taken within {self.send_timeout:.0f}s")
            out = out[sock.send(out):]  # each call blocks at most SO_SNDTIMEO

    def _run(self) -> None:
        next_renew = time.monotonic() + self._renew_every
        while not self.abandoned:
            wait = max(0.05, next_renew - time.monotonic())
            try:
                item = self._outbox.get(timeout=wait)
            except queue.Empty:
                item = None
            if self._renew is not None and time.monotonic() >= next_renew:
                self._renew()
                next_renew = time.monotonic() + self._renew_every
            if item is None:
                continue
            if item is _STOP:
                return
            try:
                if isinstance(item, tuple):
                    self.ws.close(item[1], item[2])
                    event = getattr(self.ws, "event", None)
                    if event is not None:
                        event.set()
                    return
                self._write(item)
            except Exception as exc:  # timed out (the client stopped reading) or already closed
                if not self.closing:
                    self.abandon(f"a send failed: {type(exc).__name__}")
                else:
                    self.abandoned = True
                return


class BoardHub:
    """One Redis pub/sub subscriber per process, fanning board changes out to local sockets.

    Its thread runs only while some socket of this process watches a board: it
    starts on the first subscription and ends (closing its Redis connection)
    once the last watcher has gone.
    """

    def __init__(self, redis_client, pattern: str, channel_for, attr: str = "puzzles"):
        # attr: the Connection's set of ids this hub fans out for (boards: puzzles; rooms: room_codes),
        # so one socket may watch boards and sit in a room through two hubs.
        self.redis, self.pattern, self.channel_for, self.attr = redis_client, pattern, channel_for, attr
        self._lock = threading.Lock()
        self._by_channel: dict[str, set[Connection]] = {}
        self._thread = None
        self._ready = threading.Event()

    def subscribe(self, conn: Connection, puzzle_ids) -> None:
        with self._lock:
            self._drop(conn)
            ids = set(puzzle_ids)
            setattr(conn, self.attr, ids)
            for pid in ids:
                self._by_channel.setdefault(self.channel_for(pid), set()).add(conn)
            if ids and self._thread is None:
                self._ready = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._ready,),
                                                name="captionary-board-hub", daemon=True)
                self._thread.start()
            ready = self._ready
        # Wait (briefly) until Redis confirmed the subscription, so no push after this returns is missed.
        ready.wait(2.0)

    def remove(self, conn: Connection) -> None:
        with self._lock:
            self._drop(conn)

    def channels(self) -> list[str]:
        """The channels some socket of this process watches now."""
        with self._lock:
            return list(self._by_channel)

    def _drop(self, conn: Connection) -> None:
        for pid in getattr(conn, self.attr):
            channel = self.channel_for(pid)
            watchers = self._by_channel.get(channel)
            if watchers is not None:
                watchers.discard(conn)
                if not watchers:
                    del self._by_channel[channel]
        setattr(conn, self.attr, set())

    def _idle(self) -> bool:
        """True (and the thread is forgotten) when nobody watches; call with the lock held."""
        if self._by_channel:
            return False
        self._thread = None
        return True

    def _run(self, ready: threading.Event) -> None:
        delay = 0.5
        while True:
            pubsub = None
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(self.pattern)
                pubsub.get_message(timeout=1.0)  # the psubscribe confirmation: from here on nothing is missed
                ready.set()
                delay = 0.5
                while True:
                    # A short wait, not listen(): the loop must notice when the last watcher left.
                    item = pubsub.get_message(timeout=1.0)
                    if item is None:
                        with self._lock:
                            if self._idle():
                                return
                        continue
                    if item.get("type") == "pmessage":
                        self._fan_out(item)
            except Exception as exc:  # Redis restarted or the network blipped: resubscribe
                with self._lock:
                    if self._idle():
                        return
                level = logging.WARNING if delay == 0.5 else logging.DEBUG  # say it once per outage
                log.log(level, "board hub lost its Redis subscription (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

    def _fan_out(self, item) -> None:
        channel = item["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        data = item["data"]
        try:
            text = data.decode() if isinstance(data, bytes) else str(data)
            json.loads(text)  # never forward something that is not a message
        except (TypeError, ValueError):
            return
        with self._lock:
            targets = list(self._by_channel.get(channel, ()))
        for conn in targets:  # the store published it as JSON: encoded once, not once per watcher
            conn.send_text(text)


@bp.before_request
def _check_handshake():
    if not origin_allowed(request):
        return jsonify(error("bad_origin", "websocket connections from other sites are refused")), 403
    if not session.get("player"):
        return jsonify(error("no_session", "open the game page first (it sets your player cookie)")), 401
    # The caps (game/web/connlimits.py) are checked here, before the socket is accepted: a refusal is
    # a plain HTTP 429 that costs no thread beyond this request. The slot is released in
    # _release_slot, which runs when the request ends (the whole socket's life, with flask-sock).
    limits = current_app.extensions["conn_limits"]
    try:
        g.ws_slot = limits.acquire(session["player"], client_address(request))
    except TooManyConnections as exc:
        count_refusal(current_app, "connect", "too_many_connections")
        resp = jsonify(error("too_many_connections", f"{exc}; close another tab of the game and try again"))
        resp.status_code, resp.headers["Retry-After"] = 429, "10"
        return resp
    return None


@bp.teardown_request
def _release_slot(_exc=None):
    slot = g.pop("ws_slot", None)
    if slot is not None:
        current_app.extensions["conn_limits"].release(slot)


@sock.route("/ws", bp=bp)
def websocket(ws):
    app = current_app
    game, hub = app.extensions["game"], app.extensions["board_hub"]
    max_bytes = app.config["MAX_FRAME_BYTES"]
    limits, slot = app.extensions["conn_limits"], g.get("ws_slot")
    conn = Connection(ws, session["player"], outbox=app.config["WS_OUTBOX"],
                      send_timeout=app.config["WS_SEND_TIMEOUT_S"],
                      renew=(lambda: limits.renew(slot)) if slot is not None else None, renew_every=RENEW_S)
    conn.start()
    # game/web/ops.py (graceful SIGTERM): tracks open sockets; while draining, each is closed with
    # 1012 once its current batch is answered, so in-flight drafts and submissions finish.
    drain = app.extensions.get("drain")
    budget = FrameBudget(app.config["FRAME_RATE"], app.config["FRAME_BURST"])
    try:
        if drain is not None and not drain.opened(conn):
            return
        while True:
            first = ws.receive()
            if first is None or conn.closing or (drain is not None and drain.closed_by_drain(conn)):
                break  # (a frame still buffered after our close could never be answered)
            batch = [first]
            # Whatever else already arrived is handled together: a newer draft overtakes older ones.
            while len(batch) < MAX_BATCH and (more := ws.receive(timeout=0)) is not None:
                batch.append(more)
            # Flood guard (game/web/security.py FrameBudget): frames over the per-connection budget are
            # dropped before parsing, with one slow_down notice per batch instead of a reply each.
            batch, dropped = budget.admit(batch)
            if dropped and not conn.send(error("slow_down", f"slow down: {dropped} message(s) ignored")):
                return
            if budget.abusive:  # still flooding far past the budget: stop paying for its frames
                conn.close(1008, "too many messages")
                return
            if not batch:
                continue
            with drain.busy(conn) if drain is not None else contextlib.nullcontext():
                for reply in handle_batch(game, hub, conn, batch, max_bytes):
                    if not conn.send(reply):
                        return
    finally:
        if drain is not None:
            drain.closed(conn)
        hub.remove(conn)
        room_ws.socket_closed(app, conn)
        conn.finish()  # queued replies go out (briefly) before flask-sock closes the socket
        scorer = app.extensions["scorer"]
        for stream in conn.streams:  # a closed socket's cached prefixes are dead weight
            scorer.forget_stream(stream)


def handle_batch(game, hub, conn: Connection, frames, max_bytes: int):
    """Replies for a batch of raw frames from one connection, in order; overtaken drafts are dropped."""
    parsed = []
    for raw in frames:
        try:
            parsed.append(parse_message(raw, max_bytes))
        except ProtocolError as exc:
            parsed.append(exc)
    # The newest draft of each kind (a puzzle's, a room's) is scored; older ones in the batch are dropped.
    last_draft = {m["type"]: i for i, m in enumerate(parsed)
                  if isinstance(m, dict) and m["type"] in ("draft", "room_draft")}
    for i, msg in enumerate(parsed):
        if isinstance(msg, ProtocolError):
            yield msg.reply()
            continue
        if msg["type"] in last_draft and i != last_draft[msg["type"]]:
            yield {"type": "dropped", "seq": msg["seq"]}
            continue
        try:
            yield dispatch(game, hub, conn, msg)
        except ProtocolError as exc:
            yield exc.reply()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("redis unavailable handling %s: %s", msg.get("type"), exc)
            yield error("unavailable", "the game's database is briefly unavailable, so this was not "
                        "recorded; please try again in a few seconds", msg.get("seq"))
        except Exception as exc:
            if isinstance(exc, redis.exceptions.ResponseError) and is_out_of_memory(exc):
                log.error("redis storage full (maxmemory) handling %s", msg.get("type"))
                yield error("storage_full", "the game's storage is full, so this was not recorded (everything "
                            "recorded before is safe); please try again later", msg.get("seq"))
                continue
            log.exception("unexpected error handling %s", msg.get("type"))
            yield error("internal", "something went wrong on our side; please try again",
                        msg.get("seq"))


def dispatch(game, hub, conn: Connection, msg: dict) -> dict:
    kind = msg["type"]
    if kind.startswith("room_"):
        return room_ws.dispatch(current_app, conn, msg)
    if kind == "draft":
        reply = game.draft(conn.player_id, msg)
        conn.streams.add(f"{conn.player_id}:{reply['puzzle']}")  # the stream key Game.draft scored on
        return reply
    if kind == "submit":
        return game.submit(conn.player_id, msg)
    if kind == "hint":
        return game.hint(conn.player_id, msg)
    if kind == "hello":
        puzzle = msg.get("puzzle") if isinstance(msg.get("puzzle"), str) else None
        return game.state(conn.player_id, puzzle)
    if kind == "subscribe":
        ids = [game.puzzle(p)[0].id for p in msg["puzzles"]]
        hub.subscribe(conn, ids)
        for pid in ids:  # the current boards, so the page never waits for the next change
            conn.send(game.board(pid, viewer=conn.player_id))
        return {"type": "subscribed", "puzzles": ids}
    return {"type": "pong"}


def init_app(app) -> None:
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"max_message_size": HARD_FRAME_LIMIT, "ping_interval": 25})
    store = app.extensions["store"]
    # Model ids can hold glob characters (a checkpoint file name): escape them in the pattern.
    prefix = re.sub(r"([\\*?\[\]])", r"\\\1", store.board_channel(""))
    app.extensions["board_hub"] = BoardHub(app.extensions["redis"], prefix + "*", store.board_channel)
    room_ws.init_hub(app, BoardHub)
    sock.init_app(app)
    app.register_blueprint(bp)
