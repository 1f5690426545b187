"""Play with friends: the room protocol over real websockets (werkzeug threads, real Redis, tiny CLIP),
every action and every bad one, plus the store's throttle and what rooms must never touch."""
from __future__ import annotations

import io
import json

import pytest

from harness.client import WSClient, new_player_cookie
from tests.helpers.images import png_bytes
from tests.helpers.web import make_app, serving


class Player(WSClient):
    """A WSClient that keeps the pushes it skipped while waiting for a reply: a room snapshot may be
    published (and arrive) before the reply to the action that caused it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backlog: list[dict] = []
        self.seen: list[dict] = []  # every message this socket received, in order

    def recv(self, *args, **kwargs) -> dict:
        msg = super().recv(*args, **kwargs)
        self.seen.append(msg)
        return msg

    def recv_until(self, kind: str, limit: int = 200) -> dict:
        for _ in range(limit):
            msg = self.recv()
            if msg.get("type") == kind:
                return msg
            self.backlog.append(msg)
        raise AssertionError(f"no {kind} message in {limit} messages")


@pytest.fixture
def ws_connect(live_server):
    """Players connected as browsers (GET / for the cookie, same Origin), keeping skipped pushes."""
    opened = []

    def connect(cookie=None):
        cookie = cookie or new_player_cookie(live_server.url)
        opened.append(Player(live_server.url, cookie, live_server.url))
        return opened[-1], cookie

    yield connect
    for ws in opened:
        ws.close()


def wait_state(ws, check=lambda s: True, limit=200) -> dict:
    """The next `room` snapshot that passes `check`, from the skipped pushes first (older ones are dropped)."""
    backlog = getattr(ws, "backlog", [])
    while backlog:
        msg = backlog.pop(0)
        if msg.get("type") == "room" and check(msg):
            return msg
    for _ in range(limit):
        msg = ws.recv()
        if msg.get("type") == "room" and check(msg):
            return msg
    raise AssertionError("no such room state")


def join(ws, code, nickname) -> dict:
    ws.send({"type": "room_join", "room": code, "nickname": nickname})
    joined = ws.recv_until("room_joined")
    wait_state(ws)
    return joined


def test_create_join_play_two_rounds_to_the_podium(app, archive, ws_connect, clock):
    store = app.extensions["store"]
    host, host_cookie = ws_connect()
    created = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 2, "seconds": 60, "source": "archive"})
    assert created["type"] == "room_created" and len(created["room"]) == 5
    code = created["room"]
    assert join(host, code, "Hosty")["you"]["host"] is True
    ann, _ = ws_connect()
    bob, _ = ws_connect()
    join(ann, code, "Ann")
    joined = join(bob, code, "Bob")
    assert joined["resumed"] is False and joined["you"]["role"] == "player"

    host.ask({"type": "room_start", "room": code}, "room_done")
    state = wait_state(ann, lambda s: s["phase"] == "round")
    assert state["round"] == 1 and state["ends_at"] - state["now"] <= 60_000
    assert state["picture"].endswith("-1.png") and len(state["players"]) == 3

    # Drafts: the drafter gets its score; others get bars keyed by public id, never the text.
    score = ann.ask({"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "a secret red square"},
                    "room_score")
    assert score["round"] == 1 and -1 <= score["score"] <= 1
    ann_pub = next(p["player"] for p in state["players"] if p["nickname"] == "Ann")
    bars = bob.recv_until("room_bars")
    assert bars["bars"][ann_pub] == pytest.approx(score["score"], abs=1e-5)
    assert "secret" not in json.dumps(bars)

    # Lock-ins; when every player has locked in, the round ends at once with the reveal.
    for ws, caption in ((host, "a green field"), (ann, "a red square"), (bob, "blue sky")):
        locked = ws.ask({"type": "room_lock", "room": code, "round": 1, "caption": caption}, "room_locked")
        assert locked["caption"] == caption
    reveal = wait_state(bob, lambda s: s["phase"] == "reveal")
    entries = reveal["result"]["entries"]
    assert [e["rank"] for e in entries] == [1, 2, 3]
    assert [e["score"] for e in entries] == sorted((e["score"] for e in entries), reverse=True)
    assert [e["points"] for e in entries] == [30, 20, 10]
    assert {e["caption"] for e in entries} == {"a green field", "a red square", "blue sky"}
    totals = {p["nickname"]: p["total"] for p in reveal["players"]}
    assert sorted(totals.values()) == [10, 20, 30]

    # Round 2 ends on the server's clock: nobody locks in, the time runs out.
    host.ask({"type": "room_next", "room": code}, "room_done")
    wait_state(host, lambda s: s["phase"] == "round" and s["round"] == 2)
    ann.ask({"type": "room_draft", "seq": 2, "room": code, "round": 2, "caption": "a tree"}, "room_score")
    ann.ask({"type": "room_draft", "seq": 3, "room": code, "round": 2, "caption": "a tree"}, "room_score")
    clock.advance(61)
    over = wait_state(host, lambda s: s["phase"] == "over")
    assert [e["nickname"] for e in over["result"]["entries"]] == ["Ann"]  # only Ann wrote anything
    podium = over["podium"]
    assert [p["rank"] for p in podium] == [1, 2, 3]
    assert podium[0]["total"] >= podium[1]["total"] >= podium[2]["total"]

    # Play again: same people, totals cleared, back in the lobby.
    host.ask({"type": "room_again", "room": code}, "room_done")
    again = wait_state(bob, lambda s: s["phase"] == "lobby")
    assert again["game"] == 2 and all(p["total"] == 0 for p in again["players"]) and len(again["players"]) == 3

    # Rooms never touch the daily game: no ranked submission, no caps used, no log.
    for puzzle in store.puzzles_for(store.today()):
        assert store.board_size(puzzle.id) == 0
    assert not list(store.r.scan_iter(match="cap:m:*:day:*:log"))
    assert not list(store.r.scan_iter(match="cap:m:*:pz:*:count"))


def test_gan_reveal_shows_the_machines_prompt_and_score(app, archive, ws_connect):
    host, _ = ws_connect()
    code = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 1, "seconds": 30, "source": "gan"})["room"]
    join(host, code, "Hosty")
    host.ask({"type": "room_start", "room": code}, "room_done")
    host.ask({"type": "room_lock", "room": code, "round": 1, "caption": "a raccoon"}, "room_locked")
    over = wait_state(host, lambda s: s["phase"] == "over")
    assert over["result"]["kind"] == "gan"
    assert over["result"]["prompt"] == "a raccoon driving a tractor"
    assert isinstance(over["result"]["machine_score"], float)


def test_a_rounds_target_id_goes_out_with_its_reveal_and_never_before(app, archive, ws_connect, live_server):
    """The reveal carries the round's target id (for /api/explain), and no earlier message, reply,
    state poll or page does: the picture is served by round URL until then."""
    import requests
    host, host_cookie = ws_connect()
    code = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 2, "seconds": 60})["room"]
    join(host, code, "Hosty")
    ann, _ = ws_connect()
    join(ann, code, "Ann")
    host.ask({"type": "room_start", "room": code}, "room_done")
    wait_state(ann, lambda s: s["phase"] == "round")
    first, second = json.loads(app.extensions["store"].r.hget(f"cap:room:{code}", "pictures"))

    def leaked(target):
        polled = requests.get(f"{live_server.url}/rooms/{code}/state", headers={"Cookie": host_cookie}).text
        page = requests.get(f"{live_server.url}/rooms/{code}", headers={"Cookie": host_cookie}).text
        return [m for m in host.seen + ann.seen if target in json.dumps(m)] + \
            [where for where, text in (("state", polled), ("page", page)) if target in text]

    ann.ask({"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "a red square"}, "room_score")
    host.ask({"type": "room_lock", "room": code, "round": 1, "caption": "a green field"}, "room_locked")
    assert leaked(first) == [] and leaked(second) == []
    ann.ask({"type": "room_lock", "room": code, "round": 1, "caption": "a red square"}, "room_locked")
    reveal = wait_state(host, lambda s: s["phase"] == "reveal")
    assert reveal["result"]["target"] == first
    assert leaked(second) == []  # the next round's picture stays hidden through this reveal
    host.ask({"type": "room_next", "room": code}, "room_done")
    wait_state(ann, lambda s: s["phase"] == "round" and s["round"] == 2)
    assert leaked(second) == []
    host.ask({"type": "room_skip", "room": code, "round": 2}, "room_done")
    over = wait_state(ann, lambda s: s["phase"] == "over")
    assert over["result"]["target"] == second and over["result"]["skipped"] is True


def test_sources_never_offer_a_running_day_or_an_unseen_target(app, seeded, ws_connect):
    """Today is still running and nothing else was shown: no source has a picture to offer."""
    rooms = app.extensions["rooms"]
    assert rooms.source_counts() == {"archive": 0, "photos": 0, "gan": 0}
    host, _ = ws_connect()
    reply = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 1, "seconds": 30, "source": "archive"})
    assert reply["type"] == "error" and reply["code"] == "no_pictures"


def test_bad_room_actions_get_clear_errors_and_change_nothing(app, archive, ws_connect, clock):
    host, _ = ws_connect()
    ann, _ = ws_connect()
    code = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 2, "seconds": 30})["room"]
    join(host, code, "Hosty")

    def err(ws, msg):
        reply = ws.ask(msg, "error")
        assert reply["message"]
        return reply["code"]

    # Unknown codes, malformed or well-formed.
    assert err(ann, {"type": "room_join", "room": "nope!", "nickname": "Ann"}) == "unknown_room"
    missing = "ZZZZZ" if code != "ZZZZZ" else "YYYYY"
    assert err(ann, {"type": "room_join", "room": missing, "nickname": "Ann"}) == "unknown_room"
    # Fields checked like every other message.
    assert err(ann, {"type": "room_join"}) == "missing_field"
    assert err(ann, {"type": "room_draft", "seq": 1, "room": code, "round": "1", "caption": "x"}) == "bad_field"
    assert err(ann, {"type": "room_create", "nickname": "Ann", "rounds": 0}) == "bad_field"
    assert err(ann, {"type": "room_create", "nickname": "Ann", "seconds": 5}) == "bad_field"
    assert err(ann, {"type": "room_create", "nickname": "Ann", "source": "tomorrow"}) == "bad_field"
    assert err(ann, {"type": "room_join", "room": code, "nickname": "\u200bAnn"}) == "bad_nickname"
    assert err(ann, {"type": "room_join", "room": code, "nickname": "hosty"}) == "nickname_taken"
    join(ann, code, "Ann")
    # Double join on one connection.
    assert err(ann, {"type": "room_join", "room": code, "nickname": "Ann"}) == "already_joined"
    # Only the host starts, skips, removes, hands on.
    assert err(ann, {"type": "room_start", "room": code}) == "not_host"
    assert ann.ask({"type": "ping"})["type"] == "pong"  # the socket stays open through mistakes
    assert err(ann, {"type": "room_kick", "room": code, "player": "abc"}) == "not_host"
    # No round yet: drafts and next are refused.
    assert err(ann, {"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "x y"}) == "stale_round"
    assert err(host, {"type": "room_next", "room": code}) == "bad_phase"
    host.ask({"type": "room_start", "room": code}, "room_done")
    assert err(host, {"type": "room_start", "room": code}) == "bad_phase"
    # A stale round number, and a skip of a round that is not running.
    assert err(ann, {"type": "room_draft", "seq": 2, "room": code, "round": 2, "caption": "a cat"}) == "stale_round"
    assert err(host, {"type": "room_skip", "room": code, "round": 2}) == "stale_round"
    # A spoofed timer: whatever the client claims, the server's clock says the round is over.
    clock.advance(31)
    spoof = {"type": "room_draft", "seq": 3, "room": code, "round": 1, "caption": "late caption",
             "ends_at": 10 ** 13, "now": 0, "time_left": 30}
    assert err(ann, spoof) in ("round_over", "no_round")
    assert err(ann, {"type": "room_lock", "room": code, "round": 1, "caption": "late", "ends_at": 10 ** 13}) \
        in ("round_over", "no_round")
    reveal = wait_state(ann, lambda s: s["phase"] == "reveal")
    assert reveal["result"]["entries"] == []  # nothing late counted


def test_full_room_spectators_and_late_joiners(tmp_path, redis_url, redis_client, clock):
    app = make_app(tmp_path, redis_url, clock, ROOM_MAX_PLAYERS=2, ROOM_MAX_SPECTATORS=1)
    _archive_for(app, clock)
    with serving(app) as server:
        people = [Player.player(server.url) for _ in range(5)]
        try:
            host, ann, bob, cat, dan = people
            code = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 2, "seconds": 30})["room"]
            join(host, code, "Hosty")
            host.ask({"type": "room_start", "room": code}, "room_done")
            # Ann joins late: she has a seat but plays from round 2.
            you = join(ann, code, "Ann")["you"]
            assert (you["role"], you["from"]) == ("player", 2)
            late = ann.ask({"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "a cat"}, "error")
            assert late["code"] == "not_playing"
            # Seats full (2 players): Bob watches; a watcher cannot play.
            assert join(bob, code, "Bob")["you"]["role"] == "spectator"
            assert bob.ask({"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "a cat"},
                           "error")["code"] == "not_playing"
            # Players and watchers full: refused.
            cat.send({"type": "room_join", "room": code, "nickname": "Cat"})
            assert cat.recv_until("error")["code"] == "room_full"
            host.ask({"type": "room_skip", "room": code, "round": 1}, "room_done")
            skipped = wait_state(host, lambda s: s["phase"] == "reveal")
            assert skipped["result"]["skipped"] is True
            host.ask({"type": "room_next", "room": code}, "room_done")
            wait_state(ann, lambda s: s["round"] == 2)
            assert ann.ask({"type": "room_draft", "seq": 2, "room": code, "round": 2, "caption": "a cat"},
                           "room_score")["round"] == 2
            assert dan.ask({"type": "ping"})["type"] == "pong"
        finally:
            for ws in people:
                ws.close()


def _archive_for(app, clock):
    """`archive` for an app built inside a test: a revealed day of three pictures, today on fresh ones."""
    from PIL import Image
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    for i in range(6):
        if i == 3:
            store.puzzles_for(store.today())
            clock.advance(days=1)
        data = png_bytes((20 + 35 * i, 80, 140), size=(40, 40))
        store.add_target("photo", data, scorer.embed_image(Image.open(io.BytesIO(data))), title=f"t{i}")
    store.puzzles_for(store.today())


def test_host_removes_hands_on_and_leaving_hands_on(app, archive, live_server, ws_connect, clock):
    host, _ = ws_connect()
    ann, ann_cookie = ws_connect()
    bob, _ = ws_connect()
    code = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 1, "seconds": 30})["room"]
    join(host, code, "Hosty")
    ann_pub = join(ann, code, "Ann")["you"]["player"]
    bob_pub = join(bob, code, "Bob")["you"]["player"]
    # Remove Ann: she is gone from the room and cannot come back.
    host.ask({"type": "room_kick", "room": code, "player": ann_pub}, "room_done")
    state = wait_state(bob, lambda s: all(p["player"] != ann_pub for p in s["players"]))
    assert len(state["players"]) == 2
    ann2 = Player.player(live_server.url, ann_cookie)
    try:
        ann2.send({"type": "room_join", "room": code, "nickname": "Ann"})
        assert ann2.recv_until("error")["code"] == "removed"
    finally:
        ann2.close()
    # Hand the host role to Bob: the old host can no longer start.
    host.ask({"type": "room_host", "room": code, "player": bob_pub}, "room_done")
    assert wait_state(host, lambda s: s["host"] == bob_pub)["host"] == bob_pub
    assert host.ask({"type": "room_start", "room": code}, "error")["code"] == "not_host"
    # Bob's socket closes: after the grace, the role passes on by itself to who is still here.
    bob.close()
    wait_state(host, lambda s: not next(p for p in s["players"] if p["player"] == bob_pub)["online"])
    clock.advance(11)  # after the server saw Bob go: the grace counts from then
    host_pub = next(p["player"] for p in state["players"] if p["nickname"] == "Hosty")
    assert wait_state(host, lambda s: s["host"] == host_pub)["host"] == host_pub
    # Leaving hands the role on at once (to Bob, the only other seat, though offline).
    host.ask({"type": "room_leave", "room": code}, "room_done")
    assert app.extensions["rooms"].state(code)["host"] == bob_pub


def test_reconnect_resumes_the_seat_and_the_draft(app, archive, live_server, clock):
    cookie = new_player_cookie(live_server.url)
    host = Player.player(live_server.url)
    first = Player.player(live_server.url, cookie)
    try:
        code = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 1, "seconds": 60})["room"]
        join(host, code, "Hosty")
        join(first, code, "Ann")
        host.ask({"type": "room_start", "room": code}, "room_done")
        wait_state(first, lambda s: s["phase"] == "round")
        first.ask({"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "a red square"}, "room_score")
        first.close()
        wait_state(host, lambda s: s["phase"] == "round" and
                   not next(p for p in s["players"] if p["nickname"] == "Ann")["online"])
        again = Player.player(live_server.url, cookie)
        try:
            again.send({"type": "room_join", "room": code})  # no nickname needed: the seat is kept
            joined = again.recv_until("room_joined")
            assert joined["resumed"] is True
            assert joined["you"]["draft"]["caption"] == "a red square"
            state = wait_state(again)
            assert state["phase"] == "round" and state["round"] == 1
        finally:
            again.close()
    finally:
        host.close()


def test_bar_throttle_holds_back_and_flushes(app, archive, redis_client):
    """At most one bars message per window per room: the second draft waits for the flush."""
    from game.store.rooms import RoomLimits, RoomStore
    store = app.extensions["store"]
    rooms = RoomStore(redis_client, store.now, RoomLimits(bar_window_ms=60_000))
    pool = app.extensions["rooms"].picture_pool("archive")
    code = rooms.create("player-host-abcdef", rounds=1, seconds=60, source="archive", pictures=pool)
    rooms.join(code, "player-host-abcdef", "pubhost", "Hosty")
    rooms.transact(code, lambda room: rooms.start_round(room))
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(rooms.channel(code))
    pubsub.get_message(timeout=1.0)
    assert rooms.draft(code, "player-host-abcdef", 1, 0.2, "one") is True
    assert rooms.draft(code, "player-host-abcdef", 1, 0.3, "two") is False
    assert rooms.flush_bars(code) == 2  # still inside the window
    redis_client.delete(rooms.key(code, "bar_lock"))  # the window passes
    assert rooms.flush_bars(code) == 1
    assert rooms.flush_bars(code) == 0
    sent = [json.loads(m["data"]) for m in iter(lambda: pubsub.get_message(timeout=1.0), None)]
    assert [m["bars"]["pubhost"] for m in sent] == [0.2, 0.3]
    pubsub.close()


def test_a_draft_is_recorded_only_against_the_rounds_own_picture(app, archive, redis_client):
    """room_draft.lua checks the picture a score was computed against: a process that remembered the
    pictures of an earlier game can never record a score against the wrong one."""
    from game.store.rooms import RoomError
    rooms = app.extensions["rooms"].rooms
    pool = app.extensions["rooms"].picture_pool("archive")
    code = rooms.create("player-host-abcdef", rounds=1, seconds=60, source="archive", pictures=pool)
    rooms.join(code, "player-host-abcdef", "pubhost", "Hosty")
    rooms.transact(code, lambda room: rooms.start_round(room))
    picture = json.loads(redis_client.hget(rooms.key(code), "pictures"))[0]
    other = next(t for t in pool if t != picture)
    with pytest.raises(RoomError) as moved:
        rooms.draft(code, "player-host-abcdef", 1, 0.5, "a cat", target=other)
    assert moved.value.code == "moved"
    assert redis_client.hlen(rooms.key(code, "round")) == 0 and redis_client.hlen(rooms.key(code, "bars")) == 0
    rooms.draft(code, "player-host-abcdef", 1, 0.25, "a cat", target=picture)
    assert json.loads(redis_client.hget(rooms.key(code, "round"), "player-host-abcdef"))["score"] == "0.25"
    with pytest.raises(RoomError) as gone:
        rooms.draft("ZZZZZ", "player-host-abcdef", 1, 0.5, "a cat", target=picture)
    assert gone.value.code == "unknown_room"


def test_drafts_read_the_pictures_once_per_game_and_follow_a_new_game(app, archive, redis_client, monkeypatch):
    """A process reads a room's pictures on its first draft there, not on every keystroke; when a new game
    has drawn other pictures, the next draft is scored again against the new round's picture."""
    from game.service import ProtocolError
    room_api, game = app.extensions["rooms"], app.extensions["game"]
    rooms = room_api.rooms
    pid = "player-host-abcdef"
    app.extensions["store"].set_nickname(pid, "Hosty")
    code = room_api.create(pid, {"rounds": 1, "seconds": 60, "source": "archive"})["room"]
    rooms.transact(code, lambda room: rooms.start_round(room))
    first = json.loads(redis_client.hget(rooms.key(code), "pictures"))[0]
    reads = []
    real_hget = redis_client.hget

    def counting_hget(key, field):
        if field == "pictures":
            reads.append(key)
        return real_hget(key, field)

    monkeypatch.setattr(room_api.store.r, "hget", counting_hget)
    for seq, caption in enumerate(("a red", "a red square", "a red square here"), start=1):
        reply = room_api.draft(pid, {"seq": seq, "room": code, "round": 1, "caption": caption})
        assert reply["score"] == pytest.approx(game.score_target(first, caption, "check"), abs=1e-5)
    assert len(reads) == 1

    # Play again and a new first round, as another process might do it: round 1 shows another picture.
    second = next(t for t in room_api.picture_pool("archive") if t != first)
    redis_client.hset(rooms.key(code), "pictures", json.dumps([second]))
    redis_client.delete(rooms.key(code, "round"), rooms.key(code, "bars"))  # as a new round starts empty
    reply = room_api.draft(pid, {"seq": 4, "room": code, "round": 1, "caption": "a blue sky"})
    expected = game.score_target(second, "a blue sky", "check")
    assert reply["score"] == pytest.approx(expected, abs=1e-5)
    recorded = json.loads(real_hget(rooms.key(code, "round"), pid))
    assert float(recorded["score"]) == pytest.approx(expected, abs=1e-5)
    pub = json.loads(real_hget(rooms.key(code, "members"), pid))["pub"]
    assert float(real_hget(rooms.key(code, "bars"), pub)) == pytest.approx(expected, abs=1e-5)
    assert len(reads) == 2  # read again once, for the new game

    # Play again, back in the lobby (no pictures drawn yet): a draft is a stale round, as it always was.
    redis_client.hset(rooms.key(code), mapping={"phase": "lobby", "round": 0, "pictures": "[]"})
    with pytest.raises(ProtocolError) as stale:
        room_api.draft(pid, {"seq": 5, "room": code, "round": 1, "caption": "a blue sky again"})
    assert stale.value.code == "stale_round"


def test_only_the_last_lock_in_runs_the_round_ending_transaction(app, archive, redis_client, monkeypatch):
    """A lock-in that leaves someone still writing records itself and publishes, without the WATCHed
    read-and-rewrite of the whole room; the last one ends the round at once, as before."""
    room_api, store = app.extensions["rooms"], app.extensions["store"]
    rooms = room_api.rooms
    host, ann = "player-host-abcdef", "player-ann-abcdef"
    store.set_nickname(host, "Hosty")
    store.set_nickname(ann, "Ann")
    code = room_api.create(host, {"rounds": 1, "seconds": 60, "source": "archive"})["room"]
    room_api.join(ann, {"room": code})
    room_api.host_action(host, {"type": "room_start", "room": code})
    transactions = []
    real = rooms.transact
    monkeypatch.setattr(rooms, "transact", lambda c, change: transactions.append(c) or real(c, change))
    locked = room_api.lock(host, {"room": code, "round": 1, "caption": "a green field"})
    assert locked["type"] == "room_locked" and transactions == []
    assert room_api.state(code)["phase"] == "round"
    assert [p["locked"] for p in room_api.state(code)["players"]] == [True, False]
    room_api.lock(ann, {"room": code, "round": 1, "caption": "a red square"})
    assert transactions == [code]
    reveal = room_api.state(code)
    assert reveal["phase"] == "over" and {e["caption"] for e in reveal["result"]["entries"]} == {
        "a green field", "a red square"}


def test_a_held_back_bar_is_asked_for_once_its_window_has_ended(tmp_path, redis_url, redis_client, clock,
                                                                monkeypatch):
    """The ticker does not keep asking Redis whether a held-back bar may go: the draft's reply said
    when the throttle window ends, and the flush is tried from then on."""
    app = make_app(tmp_path, redis_url, clock, ROOM_BAR_WINDOW_MS=60_000)
    _archive_for(app, clock)
    room_api = app.extensions["rooms"]
    rooms = room_api.rooms
    pid = "player-host-abcdef"
    app.extensions["store"].set_nickname(pid, "Hosty")
    code = room_api.create(pid, {"rounds": 1, "seconds": 60, "source": "archive"})["room"]
    rooms.transact(code, lambda room: rooms.start_round(room))
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(rooms.channel(code))
    pubsub.get_message(timeout=1.0)
    room_api.draft(pid, {"seq": 1, "room": code, "round": 1, "caption": "a field"})  # opens the window
    assert code not in room_api.pending_bars
    second = room_api.draft(pid, {"seq": 2, "room": code, "round": 1, "caption": "a red square"})
    asks = []
    real = rooms.flush_bars_when
    monkeypatch.setattr(rooms, "flush_bars_when", lambda c: asks.append(c) or real(c))
    for _ in range(5):
        room_api.flush_pending_bars()
    assert asks == [] and code in room_api.pending_bars  # the window has most of its minute to go
    redis_client.delete(rooms.key(code, "bar_lock"))  # the window passes...
    room_api.pending_bars[code] = 0.0  # ...and so does the time this process was told
    room_api.flush_pending_bars()
    assert asks == [code] and code not in room_api.pending_bars
    sent = [json.loads(m["data"]) for m in iter(lambda: pubsub.get_message(timeout=1.0), None)]
    pub = json.loads(redis_client.hget(rooms.key(code, "members"), pid))["pub"]
    assert [m["type"] for m in sent] == ["room_bars", "room_bars"]
    assert sent[-1]["bars"][pub] == pytest.approx(second["score"], abs=1e-5)
    pubsub.close()


def test_the_ticker_pass_ends_only_the_rounds_whose_time_is_up(app, archive, clock):
    """tick_all reads every watched room's timers in one round trip and ends just the rounds that are due."""
    room_api = app.extensions["rooms"]
    rooms = room_api.rooms
    app.extensions["store"].set_nickname("player-host-abcdef", "Hosty")
    short = room_api.create("player-host-abcdef", {"rounds": 1, "seconds": 15, "source": "archive"})["room"]
    long = room_api.create("player-host-abcdef", {"rounds": 1, "seconds": 60, "source": "archive"})["room"]
    lobby = room_api.create("player-host-abcdef", {"rounds": 1, "seconds": 15, "source": "archive"})["room"]
    for code in (short, long):
        rooms.transact(code, lambda room: rooms.start_round(room))
    assert room_api.tick_all([short, long, lobby]) == []
    clock.advance(16)
    assert room_api.tick_all([short, long, lobby, "ZZZZZ"]) == [short]
    assert [room_api.state(c)["phase"] for c in (short, long, lobby)] == ["over", "round", "lobby"]


def test_the_ticker_sleeps_until_the_next_held_back_bar_is_due_and_wakes_for_a_new_one(app):
    """wait_for_pending_bars: with nothing held back it sleeps until `until`; a bar held back meanwhile
    wakes it, and it returns when that bar is due (its window's end), long before `until`."""
    import threading
    import time
    room_api = app.extensions["rooms"]
    started = time.monotonic()
    room_api.wait_for_pending_bars(until=started + 0.05)
    assert time.monotonic() - started >= 0.05
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (room_api.wait_for_pending_bars(until=time.monotonic() + 60),
                                               done.set()))
    waiter.start()
    assert not done.wait(0.2)  # nothing is held back: it sleeps on
    held_at = time.monotonic()
    room_api._hold_bars("ABCDE", 300)  # a draft inside a window that ends in 300 ms
    assert done.wait(30), "the ticker slept through a held-back bar's window"
    assert time.monotonic() - held_at >= 0.3  # not before the window ends
    waiter.join()
    room_api.pending_bars.clear()


def test_a_held_back_bar_reaches_the_others_when_the_window_ends(tmp_path, redis_url, redis_client, clock):
    """One draft inside the throttle window and nothing after: the others still get that bar, from the
    window's end (the ticker's flush), not only when some later draft comes along."""
    import time
    # Long enough that Ann's draft surely falls inside the window the host's draft opened, even on a busy box.
    window_ms = 4000
    app = make_app(tmp_path, redis_url, clock, ROOM_BAR_WINDOW_MS=window_ms)
    _archive_for(app, clock)
    with serving(app) as server:
        host, ann, bob = people = [Player.player(server.url) for _ in range(3)]
        try:
            code = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 1, "seconds": 60})["room"]
            for ws, name in zip(people, ("Hosty", "Ann", "Bob")):
                join(ws, code, name)
            host.ask({"type": "room_start", "room": code}, "room_done")
            state = wait_state(bob, lambda s: s["phase"] == "round")
            pubs = {p["nickname"]: p["player"] for p in state["players"]}
            host.ask({"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "a field"}, "room_score")
            opened = time.monotonic()
            first = bob.recv_until("room_bars")  # the window opens with the host's bar
            assert pubs["Ann"] not in first["bars"]
            score = ann.ask({"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "a red square"},
                            "room_score")
            assert time.monotonic() - opened < window_ms / 1000  # inside the window: held back
            # Nothing else is sent by anyone; Bob still sees Ann's bar once the window has passed.
            held = bob.recv_until("room_bars")
            assert held["bars"][pubs["Ann"]] == pytest.approx(score["score"], abs=1e-5)
            assert held["bars"][pubs["Hosty"]] == first["bars"][pubs["Hosty"]]
            assert redis_client.exists(app.extensions["rooms"].rooms.key(code, "bar_pending")) == 0
        finally:
            for ws in people:
                ws.close()


@pytest.fixture
def fresh_instance(tmp_path, redis_url, redis_client, clock):
    """A fresh clone's first `play.sh` day one: only the shipped starter photos (imported on first start)
    and today's puzzles made from them, as `flask play` makes them; nothing revealed yet."""
    app = make_app(tmp_path, redis_url, clock, IMPORT_STARTER_PHOTOS=True)
    store = app.extensions["store"]
    store.puzzles_for(store.today())
    return app


def test_fresh_instance_three_friends_play_five_rounds_to_the_podium(fresh_instance, clock):
    from game import photos
    app, store = fresh_instance, fresh_instance.extensions["store"]
    rooms = app.extensions["rooms"]
    today = {p.target_id for p in store.puzzles_for(store.today())}
    counts = rooms.source_counts()
    # Every starter photo but today's three; no past day, no GAN picture yet.
    assert counts == {"archive": 0, "photos": len(photos.starter_manifest()) - len(today), "gan": 0}
    assert counts["photos"] >= 8
    assert today.isdisjoint(rooms.picture_pool("photos"))
    with serving(app) as server:
        people = [Player.player(server.url) for _ in range(3)]
        host, ann, bob = people
        try:
            code = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 5, "seconds": 60,
                             "source": "photos"}, "room_created")["room"]
            for ws, name in zip(people, ("Hosty", "Ann", "Bob")):
                join(ws, code, name)
            shown = set()
            for number in range(1, 6):
                host.ask({"type": "room_start" if number == 1 else "room_next", "room": code}, "room_done")
                wait_state(host, lambda s: s["phase"] == "round" and s["round"] == number)
                shown.add(rooms.round_picture(code, 1, number))
                for ws, caption in zip(people, ("a photo", f"picture number {number}", "something grey")):
                    ws.ask({"type": "room_lock", "room": code, "round": number, "caption": caption}, "room_locked")
                done = wait_state(bob, lambda s: s["phase"] in ("reveal", "over") and s["round"] == number)
                assert [e["points"] for e in done["result"]["entries"]] == [30, 20, 10]
            assert done["phase"] == "over" and [p["rank"] for p in done["podium"]] == [1, 2, 3]
            assert sum(p["total"] for p in done["podium"]) == 5 * 60
            assert len(shown) == 5 and shown.isdisjoint(today)  # five different pictures, none of today's
        finally:
            for ws in people:
                ws.close()
