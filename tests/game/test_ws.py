"""The websocket protocol against a real server on 127.0.0.1 (werkzeug threads, real Redis, tiny CLIP)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import websocket

from harness.client import WSClient, new_player_cookie
from tests.helpers.web import make_app, serving


def test_hello_draft_and_submit(app, seeded, ws_connect):
    ws, _ = ws_connect()
    p = seeded[0]
    state = ws.ask({"type": "hello", "puzzle": p.id})
    assert state["type"] == "state" and state["puzzle"]["submissions_left"] == 3
    assert state["today"] == app.extensions["store"].today()

    caption = "a red square on a plain background"
    reply = ws.ask({"type": "draft", "seq": 1, "puzzle": p.id, "caption": caption})
    assert reply["type"] == "score" and reply["seq"] == 1 and reply["puzzle"] == p.id
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    expected = float(np.dot(scorer.embed_text(caption), store.target_embedding(p.target_id)))
    assert reply["score"] == pytest.approx(expected, abs=1e-5)

    result = ws.ask({"type": "submit", "puzzle": p.id, "caption": caption}, "result")
    assert result["score"] == pytest.approx(expected, abs=1e-5)
    assert result["best"] == result["score"] and result["rank"] == 1
    assert result["submissions_left"] == 2 and result["practice"] is False
    # Recorded in Redis, not just echoed.
    (entry,) = store.leaderboard(p.id)
    assert store.attempts(entry.player_id, p.id)[0].caption == caption


def test_mistakes_get_errors_and_the_socket_stays_open(app, seeded, ws_connect):
    ws, _ = ws_connect()
    p = seeded[0].id
    cases = [
        ("{not json", "bad_json"),
        (json.dumps([1, 2]), "bad_message"),
        (json.dumps({"caption": "x"}), "missing_field"),
        (json.dumps({"type": "teleport"}), "unknown_type"),
        (json.dumps({"type": "draft", "puzzle": p, "caption": "x"}), "missing_field"),
        (json.dumps({"type": "draft", "seq": -1, "puzzle": p, "caption": "x"}), "bad_field"),
        (json.dumps({"type": "draft", "seq": 1, "puzzle": p, "caption": 5}), "bad_field"),
        (json.dumps({"type": "draft", "seq": 2, "puzzle": p, "caption": "   "}), "empty_caption"),
        (json.dumps({"type": "draft", "seq": 3, "puzzle": p, "caption": "x" * 201}), "caption_too_long"),
        (json.dumps({"type": "draft", "seq": 4, "puzzle": p, "caption": "bad\x00char"}), "bad_caption"),
        (json.dumps({"type": "draft", "seq": 5, "puzzle": "2026-06-15/99", "caption": "x"}), "unknown_puzzle"),
        (json.dumps({"type": "draft", "seq": 6, "puzzle": "../../etc", "caption": "x"}), "unknown_puzzle"),
        (json.dumps({"type": "draft", "seq": 7, "puzzle": "2026-06-16/1", "caption": "x"}), "not_yet"),
        (json.dumps({"type": "submit", "puzzle": p, "caption": ""}), "empty_caption"),
        (json.dumps({"type": "draft", "seq": 8, "puzzle": p, "caption": "y" * 5000}), "too_big"),
    ]
    for frame, code in cases:
        reply = ws.ask(frame)
        assert reply["type"] == "error" and reply["code"] == code, (frame[:60], reply)
        assert reply["message"]
    # The errors carried the draft's seq where there was one, and the socket still works.
    assert ws.ask({"type": "ping"})["type"] == "pong"
    assert ws.ask({"type": "draft", "seq": 9, "puzzle": p, "caption": "fine"})["type"] == "score"
    # Nothing was recorded by any of it.
    assert app.extensions["store"].board_size(p) == 0


def test_binary_and_huge_frames(seeded, ws_connect):
    ws, _ = ws_connect()
    ws.ws.send_binary(b"\xff\xfe not utf-8")
    assert ws.recv()["code"] == "bad_json"
    # Over the hard limit the websocket layer itself closes with 1009 (message too big).
    ws.ws.send("x" * ((1 << 20) + 10))
    frame = ws.ws.recv_frame()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1009


def test_submission_cap_is_enforced_and_nothing_is_lost(app, seeded, ws_connect):
    ws, _ = ws_connect()
    p = seeded[1].id
    lefts = [ws.ask({"type": "submit", "puzzle": p, "caption": f"caption number {i}"}, "result")["submissions_left"]
             for i in range(3)]
    assert lefts == [2, 1, 0]
    reply = ws.ask({"type": "submit", "puzzle": p, "caption": "one too many"})
    assert reply == {**reply, "type": "error", "code": "over_cap"}
    state = ws.ask({"type": "hello", "puzzle": p})
    assert [a["caption"] for a in state["puzzle"]["attempts"]] == [f"caption number {i}" for i in range(3)]


def test_past_days_are_practice(app, seeded, ws_connect, clock):
    ws, _ = ws_connect()
    store = app.extensions["store"]
    p = seeded[0].id
    ranked = ws.ask({"type": "submit", "puzzle": p, "caption": "ranked while the day ran"}, "result")
    clock.advance(days=1)
    store.puzzles_for(store.today())  # a new day
    practice = ws.ask({"type": "submit", "puzzle": p, "caption": "practice after the day"}, "result")
    assert practice["practice"] is True and practice["submissions_left"] is None
    board = store.leaderboard(p, with_captions=True)
    assert [e.caption for e in board] == ["ranked while the day ran"]
    assert ranked["practice"] is False


def test_draft_flood_gets_slow_down(tmp_path, redis_url, redis_client, clock, seeded, live_server):
    slow = make_app(tmp_path / "slow", redis_url, clock, DRAFT_RATE=1.0, DRAFT_BURST=3)
    with serving(slow) as server:
        url = server.url
        ws = WSClient(url, new_player_cookie(url), url)
        codes = []
        for seq in range(1, 8):  # one at a time: none is overtaken, each is answered
            codes.append(ws.ask({"type": "draft", "seq": seq, "puzzle": seeded[0].id, "caption": f"flood {seq}"}))
        kinds = [c.get("code", c["type"]) for c in codes]
        assert kinds[:3] == ["score"] * 3 and "slow_down" in kinds[3:]
        assert all(c["seq"] == i + 1 for i, c in enumerate(codes))
        assert ws.ask({"type": "ping"})["type"] == "pong"
        ws.close()


def test_foreign_origin_and_missing_cookie_are_refused(live_server, ws_connect):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        ws_connect(origin="http://evil.example")
    assert info.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WSClient(live_server.url, cookie=None, origin=live_server.url)
    assert info.value.status_code == 401
    # A forged cookie is not a player either (Flask drops a session whose signature fails).
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WSClient(live_server.url, cookie="captionary=eyJwbGF5ZXIiOiJ4eHh4eHh4eHh4In0.forged.sig",
                 origin=live_server.url)
    assert info.value.status_code == 401


def test_board_changes_are_pushed_through_redis_to_another_server(tmp_path, redis_url, clock, seeded,
                                                                   app, ws_connect):
    """A submission on one server reaches a socket on a second server: the push goes through Redis."""
    import requests
    other_app = make_app(tmp_path / "other", redis_url, clock)
    with serving(other_app) as other:
        p = seeded[2].id
        watcher, _ = ws_connect()
        sub = watcher.ask({"type": "subscribe", "puzzles": [p]})
        assert sub["type"] == "board" and sub["entries"] == []
        assert watcher.recv()["type"] == "subscribed"

        url = other.url
        session = requests.Session()
        cookie = new_player_cookie(url, session)
        session.post(url + "/api/nickname", json={"nickname": "Grace"})
        writer = WSClient(url, cookie, url)
        result = writer.ask({"type": "submit", "puzzle": p, "caption": "a secret caption"}, "result")
        push = watcher.recv_until("board")
        assert push["puzzle"] == p and push["captions_hidden"] is True
        assert [(e["nickname"], e["score"]) for e in push["entries"]] == [("Grace", result["score"])]
        assert "caption" not in push["entries"][0] and "secret" not in json.dumps(push)
        writer.close()


def test_hint_is_remembered(app, seeded, ws_connect):
    ws, cookie = ws_connect()
    p = seeded[0]
    assert ws.ask({"type": "hello", "puzzle": p.id})["puzzle"]["hint"] is None
    hint = ws.ask({"type": "hint", "puzzle": p.id})
    assert hint == {"type": "hint", "puzzle": p.id, "word": p.hint_word} and p.hint_word.startswith("word")
    again, _ = ws_connect(cookie=cookie)
    assert again.ask({"type": "hello", "puzzle": p.id})["puzzle"]["hint"] == p.hint_word
    other, _ = ws_connect()
    assert other.ask({"type": "hello", "puzzle": p.id})["puzzle"]["hint"] is None


def test_a_burst_of_drafts_gets_one_answer_per_draft_and_the_newest_is_scored(seeded, ws_connect):
    ws, _ = ws_connect()
    p = seeded[0].id
    text = ""
    for seq in range(1, 61):  # sent without waiting: the server reads them in batches
        text += "ab "[seq % 3]
        ws.send({"type": "draft", "seq": seq, "puzzle": p, "caption": "x" + text})
    answers = {}
    while len(answers) < 60:
        msg = ws.recv()
        assert msg["type"] in ("score", "dropped"), msg
        assert msg["seq"] not in answers
        answers[msg["seq"]] = msg["type"]
    assert answers[60] == "score"  # the newest draft is never dropped
    # Anything overtaken while an earlier one was scored was dropped, not scored late.
    assert ws.ask({"type": "ping"})["type"] == "pong"


def test_the_board_hub_thread_runs_only_while_someone_watches(app, seeded, ws_connect):
    hub = app.extensions["board_hub"]
    assert hub._thread is None
    ws, _ = ws_connect()
    ws.ask({"type": "subscribe", "puzzles": [seeded[0].id]}, "subscribed")
    thread = hub._thread
    assert thread is not None and thread.is_alive()
    ws.close()
    thread.join(10)  # notices within about a second that the last watcher left
    assert not thread.is_alive() and hub._thread is None
    # A later watcher starts it again and gets pushes.
    again, _ = ws_connect()
    again.ask({"type": "subscribe", "puzzles": [seeded[0].id]}, "subscribed")
    app.extensions["game"].publish_board(seeded[0].id)
    assert again.recv_until("board")["puzzle"] == seeded[0].id
