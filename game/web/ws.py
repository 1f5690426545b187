"""The websocket endpoint (/ws, flask-sock): parse, call `game.service`, send JSON. Thin on purpose.

Per connection: the player id comes from the same signed session cookie as
the pages (no cookie -> 401 before the upgrade); the handshake's Origin must
be this site's (or CAPTIONARY_ALLOWED_ORIGINS), else 403. Messages that
arrive while a draft is being scored are read as one batch; drafts overtaken
by a newer draft in the batch get `dropped` instead of a score. Board pushes
arrive from Redis pub/sub through `BoardHub`: one subscriber thread per
process fans out to this process's sockets, so a submission on any web
process reaches every browser watching that puzzle.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from urllib.parse import urlsplit

import redis
from flask import Blueprint, current_app, jsonify, request, session
from flask_sock import Sock

from game.service import ProtocolError, error, parse_message
from game.web.security import FrameBudget

log = logging.getLogger("captionary.ws")
bp = Blueprint("ws", __name__)
sock = Sock()

# A frame this large is closed by the websocket layer itself (1009); anything
# between MAX_FRAME_BYTES and this gets a "too_big" error and the socket stays open.
HARD_FRAME_LIMIT = 1 << 20
MAX_BATCH = 64  # frames read before answering: a flooding client cannot make one batch grow forever


class Connection:
    """One socket: serialised sends (handler thread and hub thread both send) and its subscriptions."""

    def __init__(self, ws, player_id: str):
        self.ws, self.player_id = ws, player_id
        self.puzzles: set[str] = set()  # subscribed boards
        self.streams: set[str] = set()  # scorer streams this socket drafted on (freed on close)
        self._send_lock = threading.Lock()

    def send(self, message: dict) -> bool:
        data = json.dumps(message, separators=(",", ":"))
        try:
            with self._send_lock:
                self.ws.send(data)
            return True
        except Exception:  # closed or broken: the handler loop notices and cleans up
            return False


class BoardHub:
    """One Redis pub/sub subscriber per process, fanning board changes out to local sockets.

    Its thread runs only while some socket of this process watches a board: it
    starts on the first subscription and ends (closing its Redis connection)
    once the last watcher has gone.
    """

    def __init__(self, redis_client, pattern: str, channel_for):
        self.redis, self.pattern, self.channel_for = redis_client, pattern, channel_for
        self._lock = threading.Lock()
        self._by_channel: dict[str, set[Connection]] = {}
        self._thread = None
        self._ready = threading.Event()

    def subscribe(self, conn: Connection, puzzle_ids) -> None:
        with self._lock:
            self._drop(conn)
            conn.puzzles = set(puzzle_ids)
            for pid in conn.puzzles:
                self._by_channel.setdefault(self.channel_for(pid), set()).add(conn)
            if conn.puzzles and self._thread is None:
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

    def _drop(self, conn: Connection) -> None:
        for pid in conn.puzzles:
            channel = self.channel_for(pid)
            watchers = self._by_channel.get(channel)
            if watchers is not None:
                watchers.discard(conn)
                if not watchers:
                    del self._by_channel[channel]
        conn.puzzles = set()

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
        try:
            message = json.loads(item["data"])
        except (TypeError, ValueError):
            return
        with self._lock:
            targets = list(self._by_channel.get(channel, ()))
        for conn in targets:
            conn.send(message)


def _origin_allowed() -> bool:
    origin = request.headers.get("Origin")
    if not origin:
        return True  # not a browser (browsers always send Origin on websocket handshakes)
    allowed = {request.host}
    extra = current_app.config.get("ALLOWED_ORIGINS") or ""
    allowed.update(o.strip() for o in str(extra).split(",") if o.strip())
    parts = urlsplit(origin)
    return parts.netloc in allowed or origin in allowed


@bp.before_request
def _check_handshake():
    if not _origin_allowed():
        return jsonify(error("bad_origin", "websocket connections from other sites are refused")), 403
    if not session.get("player"):
        return jsonify(error("no_session", "open the game page first (it sets your player cookie)")), 401
    return None


@sock.route("/ws", bp=bp)
def websocket(ws):
    app = current_app
    game, hub = app.extensions["game"], app.extensions["board_hub"]
    max_bytes = app.config["MAX_FRAME_BYTES"]
    conn = Connection(ws, session["player"])
    # game/web/ops.py (graceful SIGTERM): tracks open sockets; while draining, each is closed with
    # 1012 once its current batch is answered, so in-flight drafts and submissions finish.
    drain = app.extensions.get("drain")
    budget = FrameBudget(app.config.get("FRAME_RATE", 60.0), app.config.get("FRAME_BURST", 120.0))
    if drain is not None and not drain.opened(conn):
        return
    try:
        while True:
            first = ws.receive()
            if first is None or (drain is not None and drain.closed_by_drain(conn)):
                break  # (a frame still buffered after our 1012 close could never be answered)
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
                ws.close(1008, "too many messages")
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
    last_draft = max((i for i, m in enumerate(parsed) if isinstance(m, dict) and m["type"] == "draft"),
                     default=-1)
    for i, msg in enumerate(parsed):
        if isinstance(msg, ProtocolError):
            yield msg.reply()
            continue
        if msg["type"] == "draft" and i != last_draft:
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
        except Exception:
            log.exception("unexpected error handling %s", msg.get("type"))
            yield error("internal", "something went wrong on our side; please try again",
                        msg.get("seq"))


def dispatch(game, hub, conn: Connection, msg: dict) -> dict:
    kind = msg["type"]
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
    sock.init_app(app)
    app.register_blueprint(bp)
