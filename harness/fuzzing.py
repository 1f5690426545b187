"""Fuzzing the websocket protocol and every HTTP endpoint (hypothesis), shared by tests and bench.

What counts as a failure:
  crash      the server closed a socket it should have kept open, stopped answering, or
             answered an action with the catch-all `internal` error (an unexpected exception)
  http_500   any HTTP status >= 500 (503 `busy`/not-ready is allowed only where documented:
             /readyz and the judge's back-pressure)
  bad reply  a reply that is not a JSON object with a known `type`, or an error without a
             machine-readable `code` and a readable `message`; an /api/ answer that is not JSON

`fuzz_websocket` and `fuzz_http` run hypothesis from plain code (no pytest needed), so
bench/hardening.py drives the same strategies at >= 10,000 messages. With `strict`, the
first failure raises (hypothesis then shrinks it to a minimal example); otherwise
failures are counted and the first few kept for the report.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

SERVER_TYPES = {"state", "score", "dropped", "result", "subscribed", "board", "hint", "pong", "error", "nickname",
                "status", "daily", "room_created", "room_joined", "room_score", "room_locked", "room_done"}
PUSH_TYPES = {"board", "room", "room_bars"}  # sent when something changes, not in answer to a frame
ROOM_TYPES = ["room_create", "room_join", "room_draft", "room_lock", "room_start", "room_next", "room_skip",
              "room_kick", "room_host", "room_leave", "room_again"]
CLIENT_TYPES = ["hello", "draft", "submit", "subscribe", "hint", "ping"] + ROOM_TYPES
# What a room message may be answered with when it is refused (game/rooms.py's list, the message
# checks every frame passes, caption rules, rate limits, a busy judge or store); anything else, such
# as a puzzle's error code for a room action, is a bad reply.
ROOM_ERROR_CODES = {"unknown_room", "room_full", "not_host", "already_joined", "stale_round", "round_over",
                    "no_round", "not_playing", "locked_in", "removed", "bad_phase", "nickname_needed",
                    "bad_nickname", "nickname_taken", "slow_down", "not_in_room", "no_pictures",
                    "bad_json", "bad_message", "missing_field", "unknown_type", "bad_field", "too_big",
                    "bad_caption", "caption_too_long", "empty_caption", "busy", "unavailable", "storage_full"}


@dataclass
class Stats:
    messages: int = 0
    crashes: int = 0
    http_500: int = 0
    bad_replies: int = 0
    examples: list = field(default_factory=list)
    replies: dict = field(default_factory=dict)  # reply type or error code -> count (what was exercised)

    def saw(self, what: str) -> None:
        self.replies[what] = self.replies.get(what, 0) + 1

    def problem(self, kind: str, detail, strict: bool) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 10:
            self.examples.append((kind, str(detail)[:300]))
        if strict:
            raise AssertionError(f"{kind}: {detail}")


# -- strategies ---------------------------------------------------------------------------------
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


def puzzle_ids(real: list[str]):
    return st.one_of(st.sampled_from(real), st.sampled_from(["2026-13-40/1", "1999-01-01/1", "9999-12-31/3",
                                                             "../../etc/passwd", "2026-06-15/999", "", " "]),
                     st.from_regex(r"\d{4}-\d{2}-\d{2}/\d{1,4}", fullmatch=True), st.text(max_size=40))


captions = st.one_of(
    st.text(max_size=220),  # any unicode, lone surrogates included (JSON can carry them as \ud800)
    st.text(alphabet=string.ascii_lowercase + " ", min_size=1, max_size=80),
    st.sampled_from(["<script>alert(1)</script>", "\x00", "\u202e\u200b", "a" * 201, "🦝" * 60, "   ",
                     "{{7*7}}", "' OR 1=1 --", "\\", "\n\t\r"]))


def messages(real: list[str]):
    anything = json_value
    message = st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(CLIENT_TYPES), st.sampled_from(CLIENT_TYPES), anything)},
        optional={"seq": st.one_of(st.integers(0, 2 ** 60), st.integers(-10, -1), anything),
                  "puzzle": st.one_of(puzzle_ids(real), anything),
                  "caption": st.one_of(captions, anything),
                  "puzzles": st.one_of(st.lists(puzzle_ids(real), max_size=20), anything),
                  "nickname": st.one_of(st.text(max_size=60), anything),
                  "room": st.one_of(room_codes([]), anything),
                  "round": st.one_of(st.integers(-2, 30), anything),
                  "player": st.one_of(st.text(max_size=14), anything)})
    return message


def room_codes(real: list[str]):
    """Room codes: the real ones, unknown well-formed ones, lower case, and junk."""
    bad = st.one_of(st.sampled_from(["", " ", "ZZZZZ", "AAAAA", "nope!", "k7qpm", "0O1I5", "ABCDEFGHJK", "../x",
                                     "\u0000", "🦝🦝🦝🦝🦝"]),
                    st.from_regex(r"[A-Z2-9]{5}", fullmatch=True), st.text(max_size=12))
    return st.one_of(st.sampled_from(real), st.sampled_from(real).map(str.lower), bad) if real else bad


def room_messages(real_rooms: list[str], players: list[str]):
    """Well-formed room actions (real room codes and bad ones, odd rounds, sources, nicknames, players):
    past the message checks, into game/rooms.py and the room store's scripts."""
    code = st.one_of(st.sampled_from(real_rooms), room_codes(real_rooms)) if real_rooms else room_codes([])
    rnd = st.one_of(st.integers(1, 2), st.integers(0, 3), st.integers(0, 2 ** 53 - 1))
    seq = st.integers(0, 2 ** 53 - 1)
    who = st.one_of(st.sampled_from(players), st.text(max_size=14)) if players else st.text(max_size=14)
    nickname = st.one_of(st.none(), st.sampled_from(["fuzzer", "Fuzzer", "\u200bfuzz", "x", "a" * 40]),
                         st.text(max_size=30))
    simple = st.sampled_from(["room_start", "room_next", "room_leave", "room_again"])
    return st.one_of(
        st.builds(lambda r, s, src, n: {k: v for k, v in {"type": "room_create", "rounds": r, "seconds": s,
                                                          "source": src, "nickname": n}.items() if v is not None},
                  st.one_of(st.integers(0, 25), st.none()), st.one_of(st.sampled_from([0, 14, 15, 60, 300, 301]),
                                                                      st.none()),
                  st.one_of(st.sampled_from(["archive", "photos", "gan", "tomorrow", "", "ARCHIVE"]), st.none()),
                  nickname),
        st.builds(lambda c, n: {k: v for k, v in {"type": "room_join", "room": c, "nickname": n}.items()
                                if v is not None}, code, nickname),
        st.builds(lambda s, c, r, t: {"type": "room_draft", "seq": s, "room": c, "round": r, "caption": t},
                  seq, code, rnd, captions),
        st.builds(lambda c, r, t: {"type": "room_lock", "room": c, "round": r, "caption": t}, code, rnd, captions),
        st.builds(lambda k, c: {"type": k, "room": c}, simple, code),
        st.builds(lambda c, r: {"type": "room_skip", "room": c, "round": r}, code, rnd),
        st.builds(lambda k, c, p: {"type": k, "room": c, "player": p}, st.sampled_from(["room_kick", "room_host"]),
                  code, who),
        # A spoofed timer: fields the server never reads (its own clock decides).
        st.builds(lambda c, r, t: {"type": "room_draft", "seq": 1, "room": c, "round": r, "caption": t,
                                   "ends_at": 10 ** 13, "now": 0}, code, rnd, captions))


def valid_messages(real: list[str]):
    """Well-formed actions with real puzzles and edgy captions: these reach the scorer and the store."""
    seq = st.integers(0, 2 ** 53 - 1)
    return st.one_of(
        st.builds(lambda s, p, c: {"type": "draft", "seq": s, "puzzle": p, "caption": c}, seq, st.sampled_from(real),
                  captions),
        st.builds(lambda p, c: {"type": "submit", "puzzle": p, "caption": c}, st.sampled_from(real), captions),
        st.builds(lambda ps: {"type": "subscribe", "puzzles": ps}, st.lists(st.sampled_from(real), max_size=3)),
        st.builds(lambda p: {"type": "hint", "puzzle": p}, st.sampled_from(real)),
        st.builds(lambda p: {"type": "hello", "puzzle": p}, st.one_of(st.sampled_from(real), st.none())))


def frames(real: list[str], rooms: list[str] = (), players: list[str] = ()):
    """One websocket frame: mostly message-shaped JSON, also raw text, JSON of any shape, bytes, odd sizes;
    with `rooms` (codes the fuzzing player sits in) and `players` (public ids), room actions too."""
    room_frames = [room_messages(list(rooms), list(players)).map(json.dumps)] * 3 if rooms else []
    return st.one_of(
        *room_frames,
        valid_messages(real).map(json.dumps),
        valid_messages(real).map(lambda m: json.dumps(m, ensure_ascii=False)),
        messages(real).map(json.dumps),
        messages(real).map(json.dumps),
        messages(real).map(lambda m: json.dumps(m, ensure_ascii=False)),
        json_value.map(json.dumps),
        st.text(max_size=200),
        st.binary(max_size=200),
        st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # deep nesting under the size limit
        st.integers(4097, 20000).map(lambda n: json.dumps({"type": "draft", "seq": 1, "caption": "x" * n})),
    )


# -- websocket ----------------------------------------------------------------------------------
def _check_reply(reply, stats: Stats, strict: bool) -> None:
    if isinstance(reply, dict):
        stats.saw(str(reply.get("code") or reply.get("type")))
    if not isinstance(reply, dict) or reply.get("type") not in SERVER_TYPES:
        stats.problem("bad_replies", reply, strict)
        return
    if reply["type"] == "error":
        if reply.get("code") == "internal":
            stats.problem("crashes", reply, strict)
        elif not (isinstance(reply.get("code"), str) and reply["code"]
                  and isinstance(reply.get("message"), str) and reply["message"]):
            stats.problem("bad_replies", reply, strict)


def _room_setup(player, source: str, rounds: int) -> tuple[list[str], list[str]]:
    """The fuzzing player creates a room, joins it and starts round 1 (so drafts, lock-ins, skips and the
    host's buttons have something to act on); ([its code], [its public id])."""
    created = player.ask({"type": "room_create", "nickname": "fuzzhost", "rounds": rounds, "seconds": 300,
                          "source": source}, "room_created")
    joined = player.ask({"type": "room_join", "room": created["room"]}, "room_joined")
    player.ask({"type": "room_start", "room": created["room"]}, "room_done")
    return [created["room"]], [joined["you"]["player"]]


def _check_room_replies(batch, replies, stats: Stats, strict: bool) -> None:
    """Refused room actions carry ROOM_ERROR_CODES. Replies need not come in the frames' order (an
    oversized frame is refused as it is read, before the batch around it is handled), so: at most as
    many errors with other codes as the batch has frames that are not room actions."""
    room_frames = 0
    for frame in batch:
        try:
            msg = json.loads(frame)
        except (ValueError, RecursionError):
            continue
        room_frames += isinstance(msg, dict) and msg.get("type") in ROOM_TYPES
    if not room_frames:
        return
    errors = [r for r in replies if isinstance(r, dict) and r.get("type") == "error"]
    if errors:
        stats.saw("room error")
    other = [r.get("code") for r in errors if r.get("code") not in ROOM_ERROR_CODES]
    if len(other) > len(batch) - room_frames:
        stats.problem("bad_replies", f"{room_frames} room action(s) of {len(batch)} frames, yet {len(other)} "
                                     f"errors with codes no room action has: {other}; batch "
                                     f"{[str(f)[:80] for f in batch]}", strict)


def fuzz_websocket(base_url: str, puzzles: list[str], examples: int, *, strict: bool = False, seed: int = 0,
                   stats: Stats | None = None, room_source: str | None = None, room_rounds: int = 2) -> Stats:
    """Send `examples` batches of 1-4 frames over one socket (reconnecting after a crash).

    `room_source`: the player first creates and starts a room of `room_rounds` rounds from that picture
    source, and the frames include room actions on it (and on unknown codes); a refused room action
    must carry one of ROOM_ERROR_CODES."""
    import websocket
    from harness.client import WSClient
    stats = stats or Stats()
    state = {"player": WSClient.player(base_url)}
    rooms, players = _room_setup(state["player"], room_source, room_rounds) if room_source else ([], [])

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink] if strict else [Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(frames(puzzles, rooms, players), min_size=1, max_size=4))
    def run(batch):
        player = state["player"]
        try:
            for frame in batch:
                if isinstance(frame, bytes):
                    player.ws.send_binary(frame)
                else:
                    player.ws.send(frame)
            stats.messages += len(batch)
            replies = []
            while len(replies) < len(batch):
                reply = json.loads(player.ws.recv())
                if isinstance(reply, dict) and reply.get("type") in PUSH_TYPES:
                    continue  # a push (subscribe answers with the boards first; rooms push their state)
                _check_reply(reply, stats, strict)
                replies.append(reply)
            _check_room_replies(batch, replies, stats, strict)
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            # The socket closed or went silent: only a server bug does that to frames this size.
            state["player"] = WSClient.player(base_url, cookie=player.cookie)
            stats.problem("crashes", f"{type(exc).__name__}: {exc} after {[str(f)[:60] for f in batch]}", strict)
        except AssertionError:
            # strict: a failure left this batch's later replies unread; shrinking replays on a clean socket
            # (otherwise each replay reads the last one's leftovers as its own replies).
            player.close()
            state["player"] = WSClient.player(base_url, cookie=player.cookie)
            raise

    try:
        run()
    finally:
        state["player"].close()
    return stats


# -- HTTP ---------------------------------------------------------------------------------------
SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_.~%!$&'()*+,;=:@", max_size=24)
DAYS = st.one_of(st.sampled_from(["2026-06-15", "2026-02-30", "0000-00-00", "today", "-1"]),
                 st.from_regex(r"\d{4}-\d{2}-\d{2}", fullmatch=True), SEGMENT)


def http_requests(real: list[str]):
    """(method, path, headers, body) covering every route, with malformed parts."""
    day_of = st.sampled_from([p.split("/")[0] for p in real])
    pid = puzzle_ids(real).map(lambda p: p.replace("%", "%25").replace("#", "%23").replace("?", "%3F")
                               .replace("&", "%26").replace(" ", "%20").replace("+", "%2B"))
    q = st.text(alphabet=string.printable.strip(), max_size=30).map(
        lambda s: "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in s))
    get_paths = st.one_of(
        st.sampled_from(["/", "/leaderboard", "/archive", "/how", "/nickname", "/api/status", "/api/state",
                         "/api/board", "/api/daily", "/healthz", "/readyz", "/metrics", "/admin/", "/admin/jobs",
                         "/static/style.css", "/static/../game/config.py", "/ws", "/api/", "/api/nope"]),
        st.builds(lambda d, n: f"/play/{d}/{n}", st.one_of(day_of, DAYS), st.one_of(st.integers(-5, 1000).map(str),
                                                                                   SEGMENT)),
        st.builds(lambda d: f"/leaderboard/{d}", st.one_of(day_of, DAYS)),
        st.builds(lambda d: f"/reveal/{d}", st.one_of(day_of, DAYS)),
        st.builds(lambda t: f"/target/{t}.png", SEGMENT),
        st.builds(lambda p: f"/api/state?puzzle={p}", pid),
        st.builds(lambda p: f"/api/board?puzzle={p}", pid),
        st.builds(lambda d: f"/api/daily?date={d}", st.one_of(DAYS, q)),
        st.builds(lambda s: "/" + s, SEGMENT),
        # Valid routes with real ids, so the fuzz also walks the success paths under odd neighbours.
        st.builds(lambda p, r: f"/{r}{p}", st.sampled_from(real),
                  st.sampled_from(["play/", "api/state?puzzle=", "api/board?puzzle="])),
        st.builds(lambda d, r: f"/{r}{d}", day_of, st.sampled_from(["leaderboard/", "reveal/", "api/daily?date="])),
    )
    json_bodies = st.one_of(valid_messages(real).map(json.dumps), messages(real).map(json.dumps), json_value.map(json.dumps), st.text(max_size=100),
                            st.integers(1, 3000).map(lambda n: "[" * n + "]" * n))
    body = st.one_of(json_bodies.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=300),
                     st.just(b"x" * (70 * 1024)))  # over MAX_CONTENT_LENGTH
    ctype = st.sampled_from(["application/json"] * 4 + ["application/json; charset=utf-8", "text/plain",
                             "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz", ""])
    origin = st.sampled_from([None, None, "http://evil.example", "null"])
    post_paths = st.sampled_from(["/api/draft"] * 3 + ["/api/submit"] * 2 + ["/api/hint", "/api/nickname", "/nickname",
                                  "/api/status", "/admin/login", "/", "/healthz"])
    gets = st.tuples(st.just("GET"), get_paths, st.just({}), st.just(b""))
    posts = st.tuples(st.sampled_from(["POST"] * 7 + ["PUT", "DELETE", "PATCH"]), post_paths,
                      st.builds(lambda c, o: {k: v for k, v in (("Content-Type", c), ("Origin", o)) if v},
                                ctype, origin), body)
    return st.one_of(gets, posts)


def _check_http(method, path, status, ctype, data, stats: Stats, strict: bool) -> None:
    allowed_503 = path.startswith("/readyz") or (path.startswith("/api/") and b'"busy"' in data)
    if status >= 500 and not (status == 503 and allowed_503):
        stats.problem("http_500", f"{method} {path} -> {status}: {data[:200]!r}", strict)
        return
    if path.startswith("/api/"):  # every /api/ answer is JSON, errors (404, 405, 413) included
        try:
            body = json.loads(data)
        except ValueError:
            stats.problem("bad_replies", f"{method} {path} -> {status} not JSON: {data[:120]!r}", strict)
            return
        if status >= 400 and not (isinstance(body, dict) and body.get("type") == "error" and body.get("code")
                                  and body.get("message")):
            stats.problem("bad_replies", f"{method} {path} -> {status}: {body!r}"[:300], strict)


def fuzz_http(send, puzzles: list[str], examples: int, *, strict: bool = False, derandomize: bool = False,
              stats: Stats | None = None) -> Stats:
    """`send(method, path, headers, body) -> (status, content_type, body bytes)` for each generated request.
    `derandomize`: the same requests every run (a test asserting which answers were reached)."""
    stats = stats or Stats()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              phases=[Phase.generate, Phase.shrink] if strict else [Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(req=http_requests(puzzles))
    def run(req):
        method, path, headers, body = req
        stats.messages += 1
        try:
            status, ctype, data = send(method, path, headers, body)
        except Exception as exc:  # the server raised (test client) or dropped the connection (HTTP)
            stats.problem("crashes", f"{method} {path}: {type(exc).__name__}: {exc}", strict)
            return
        stats.saw(f"HTTP {status}")
        _check_http(method, path, status, ctype, data, stats, strict)

    run()
    return stats


def flask_client_sender(client):
    def send(method, path, headers, body):
        resp = client.open(path, method=method, headers=headers, data=body)
        return resp.status_code, resp.content_type, resp.get_data()
    return send


def requests_sender(base_url: str):
    import requests
    session = requests.Session()
    session.get(base_url + "/", timeout=10)

    def send(method, path, headers, body):
        try:
            resp = session.request(method, base_url + path, headers=headers, data=body, timeout=30,
                                   allow_redirects=False)
        except requests.ConnectionError:
            # gunicorn drains at most 64 KiB of a body the app did not read (a 413, or a refused
            # form); past that it closes the kept-alive connection after answering, and the next
            # request on it fails before any response. Browsers retry such a request on a fresh
            # connection, and so does this client, once; a server that is really gone fails again.
            send.retries += 1
            session.close()
            resp = session.request(method, base_url + path, headers=headers, data=body, timeout=30,
                                   allow_redirects=False)
        return resp.status_code, resp.headers.get("Content-Type", ""), resp.content
    send.retries = 0
    return send
