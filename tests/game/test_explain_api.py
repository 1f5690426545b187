"""/api/explain/words and /api/explain/heatmap (game/explain.py): good answers and every bad input.

Real app on test-tiny, the session's real Redis, the settable clock (tests/helpers/web.py).
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers.images import png_bytes
from tests.helpers.web import make_app

TOL = 1e-5


def post(client, path, body, **kw):
    return client.post(f"/api/explain/{path}", json=body, **kw)


def err(resp, status, code):
    assert resp.status_code == status, (resp.status_code, resp.get_json())
    body = resp.get_json()
    assert body["type"] == "error" and body["code"] == code, body
    return body


def test_words_on_the_running_day_only_for_your_submitted_captions(client, seeded):
    p = seeded[0]
    client.get("/")
    err(post(client, "words", {"puzzle": p.id, "caption": "a red square"}), 403, "not_submitted")
    client.post("/api/submit", json={"puzzle": p.id, "caption": "  a red square "})
    resp = post(client, "words", {"puzzle": p.id, "caption": "a red square"})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["type"] == "words" and body["puzzle"] == p.id and body["caption"] == "a red square"
    assert [w["word"] for w in body["words"]] == ["a", "red", "square"]
    other = client.application.test_client()
    other.get("/")
    err(post(other, "words", {"puzzle": p.id, "caption": "a red square"}), 403, "not_submitted")  # yours only


def test_words_in_practice_equal_scoring_each_variant(app, client, archive):
    p = archive[1]
    client.get("/")
    caption = "a green blob, painted on a wooden fence"
    body = post(client, "words", {"puzzle": p.id, "caption": caption}).get_json()
    assert body["type"] == "words", body
    scorer, store = app.extensions["scorer"], app.extensions["store"]
    image = store.target_embedding(p.target_id)
    full = scorer.score(caption, image)
    assert abs(body["score"] - full) <= TOL
    words = caption.split()
    for i, row in enumerate(body["words"]):
        alone = scorer.score(" ".join(words[:i] + words[i + 1:]), image)
        assert row["word"] == words[i] and abs(row["effect"] - (full - alone)) <= TOL
    again = post(client, "words", {"puzzle": p.id, "caption": caption}).get_json()
    assert again == body  # the cached answer is the same answer
    one = post(client, "words", {"puzzle": p.id, "caption": "green"}).get_json()
    assert one["words"] == [{"word": "green", "effect": None}]


def test_heatmap_is_refused_on_the_running_day(client, seeded, clock):
    p = seeded[0]
    client.get("/")
    client.post("/api/submit", json={"puzzle": p.id, "caption": "a red square"})
    body = err(post(client, "heatmap", {"puzzle": p.id, "caption": "a red square"}), 409, "running_day")
    assert "day is over" in body["message"]
    err(post(client, "heatmap", {"target": p.target_id, "caption": "red"}), 409, "running_day")
    # A three-picture pool repeats yesterday's pictures today: the past puzzle's picture is running again.
    clock.advance(days=1)
    assert p.target_id in {q.target_id for q in client.application.extensions["store"].puzzles_for(
        client.application.extensions["store"].today())}
    err(post(client, "heatmap", {"puzzle": p.id, "caption": "a red square"}), 409, "running_day")
    err(post(client, "words", {"puzzle": p.id, "caption": "a red square"}), 409, "running_day")


def test_heatmap_after_the_day(client, archive):
    p = archive[0]
    client.get("/")
    resp = post(client, "heatmap", {"puzzle": p.id, "caption": "a red square"})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["type"] == "heatmap" and (body["rows"], body["cols"]) == (4, 4)  # test-tiny: 64 px / 16 px
    grid = np.array(body["grid"])
    assert grid.shape == (4, 4) and grid.min() >= 0 and abs(grid.max() - 1) <= 1e-4
    by_target = post(client, "heatmap", {"target": p.target_id, "caption": "a red square"}).get_json()
    assert by_target["grid"] == body["grid"] and by_target["target"] == p.target_id


def test_pool_and_unknown_targets_are_refused(app, client, archive):
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    data = png_bytes((250, 250, 0), size=(40, 40))
    pool = store.add_target("photo", data, scorer.embed_image(Image.open(io.BytesIO(data))), title="unseen")
    client.get("/")
    body = err(post(client, "heatmap", {"target": pool, "caption": "yellow"}), 403, "pool_target")
    assert "not been a puzzle" in body["message"]
    err(post(client, "words", {"target": pool, "caption": "yellow"}), 403, "pool_target")
    err(post(client, "heatmap", {"target": "no-such-target", "caption": "x"}), 404, "not_found")
    err(post(client, "heatmap", {"target": "../etc/passwd", "caption": "x"}), 404, "not_found")
    today = store.puzzles_for(store.today())[0]
    err(post(client, "heatmap", {"target": today.target_id, "caption": "x"}), 409, "running_day")
    ok = post(client, "heatmap", {"target": archive[2].target_id, "caption": "blue"})  # yesterday's picture
    assert ok.status_code == 200, ok.get_json()


def test_a_rooms_finished_round_is_explained_to_its_members(app, client, archive):
    """A room's picture (here one no day has shown, like a starter photo in a "photos" room) is
    explained with the target id its reveal carries, to the room's members, once the round is over;
    during the round, to outsiders and without the room it is refused; a running day's picture
    stays refused even in a room."""
    from game.service import public_id
    store, scorer, rooms = app.extensions["store"], app.extensions["scorer"], app.extensions["rooms"]
    data = png_bytes((220, 200, 30), size=(40, 40))
    emb = scorer.embed_image(Image.open(io.BytesIO(data)))
    tid = store.add_target("photo", data, emb, title="a starter photo")
    today = store.puzzles_for(store.today())[0].target_id
    client.get("/")
    with client.session_transaction() as session:
        pid = session["player"]

    def play(pictures):
        code = rooms.rooms.create(pid, rounds=len(pictures), seconds=60, source="photos", pictures=pictures)
        rooms.rooms.join(code, pid, public_id(pid), "Ann")
        rooms.rooms.transact(code, lambda room: rooms.rooms.start_round(room, pictures))
        return code

    code = play([tid])
    body = {"target": tid, "room": code, "caption": "a yellow square"}
    for kind in ("words", "heatmap"):  # the round is running: no explanation yet
        err(post(client, kind, body), 409, "round_running")
    rooms.lock(pid, {"room": code, "round": 1, "caption": "a yellow square"})  # everyone locked in: revealed
    assert rooms.state(code)["result"]["target"] == tid
    words = post(client, "words", body)
    assert words.status_code == 200, words.get_json()
    words = words.get_json()
    assert words["target"] == tid and [w["word"] for w in words["words"]] == ["a", "yellow", "square"]
    assert abs(words["score"] - scorer.score("a yellow square", emb)) <= TOL
    heat = post(client, "heatmap", body)
    assert heat.status_code == 200, heat.get_json()
    assert np.array(heat.get_json()["grid"]).shape == (4, 4)

    err(post(client, "heatmap", {"target": tid, "caption": "a yellow square"}), 403, "pool_target")  # no room
    other = app.test_client()
    other.get("/")
    err(post(other, "words", body), 403, "not_in_room")
    err(post(client, "words", {**body, "room": "ZZZZZ" if code != "ZZZZZ" else "YYYYY"}), 404, "unknown_room")
    err(post(client, "words", {**body, "target": archive[0].target_id}), 409, "round_running")  # not its picture
    err(post(client, "words", {"room": code, "caption": "x"}), 400, "missing_field")

    running = play([today])
    rooms.lock(pid, {"room": running, "round": 1, "caption": "a green field"})
    err(post(client, "heatmap", {"target": today, "room": running, "caption": "x"}), 409, "running_day")


@pytest.mark.parametrize("body,status,code", [
    ({"caption": "x"}, 400, "missing_field"),
    ({"puzzle": "P", "target": "t", "caption": "x"}, 400, "missing_field"),
    ({"puzzle": "P"}, 400, "missing_field"),
    ({"puzzle": "P", "caption": 5}, 400, "bad_field"),
    ({"puzzle": ["P"], "caption": "x"}, 400, "bad_field"),
    ({"puzzle": "P", "caption": "   "}, 400, "empty_caption"),
    ({"puzzle": "P", "caption": "x" * 201}, 400, "caption_too_long"),
    ({"puzzle": "P", "caption": "bad\x00char"}, 400, "bad_caption"),
    ({"puzzle": "P", "caption": "&nbsp;"}, 400, "bad_caption"),  # no words the judge can read
    ({"puzzle": "2026-13-40/1", "caption": "x"}, 404, "unknown_puzzle"),
    ({"puzzle": "2999-01-01/1", "caption": "x"}, 404, "not_yet"),
])
@pytest.mark.parametrize("path", ["words", "heatmap"])
def test_bad_input_gets_a_clear_error(client, archive, path, body, status, code):
    body = {k: (archive[0].id if v == "P" else v) for k, v in body.items()}  # a past day: only the input is wrong
    client.get("/")
    msg = err(post(client, path, body), status, code)
    assert msg["message"]


@pytest.mark.parametrize("path", ["words", "heatmap"])
def test_transport_errors(client, seeded, path):
    client.get("/")
    url = f"/api/explain/{path}"
    err(client.post(url, data="caption=x", content_type="application/x-www-form-urlencoded"), 400, "bad_json")
    err(client.post(url, data="{nope", content_type="application/json"), 400, "bad_json")
    err(client.post(url, json=["x"]), 400, "bad_message")
    err(client.post(url, json={"puzzle": seeded[0].id, "caption": "x" * 5000}), 413, "too_big")
    err(client.post(url, json={"puzzle": seeded[0].id, "caption": "x"}, headers={"Origin": "https://evil.example"}),
        403, "bad_origin")
    assert client.get(url).status_code == 405


def test_explanations_are_rate_limited_like_submissions(tmp_path, redis_url, redis_client, clock):
    app = make_app(tmp_path, redis_url, clock, SUBMIT_RATE=0.01, SUBMIT_BURST=3)
    store, scorer = app.extensions["store"], app.extensions["scorer"]

    def add(n, green):
        for i in range(n):
            data = png_bytes((40 + i * 90, green, 60), size=(48, 40))
            store.add_target("photo", data, scorer.embed_image(Image.open(io.BytesIO(data))), title=f"t{i}")
    add(3, 10)
    puzzle = store.puzzles_for(store.today())[0]
    clock.advance(days=1)
    add(3, 200)  # today gets fresh pictures, so yesterday's are past puzzles only
    client = app.test_client()
    client.get("/")
    codes = [post(client, kind, {"puzzle": puzzle.id, "caption": f"a red thing {i}"}).status_code
             for i, kind in enumerate(["words", "heatmap", "words", "heatmap"])]
    assert codes == [200, 200, 200, 429]
    resp = post(client, "words", {"puzzle": puzzle.id, "caption": "again"})
    err(resp, 429, "slow_down")
    assert resp.headers["Retry-After"] == "1"


def test_a_full_lane_answers_busy_at_once(tiny_clip):
    """One explanation at a time per process; one more may wait; the next is told "busy" without waiting,
    and so is one that waited past its timeout."""
    import threading

    from engine.scorer import Scorer
    from game.explain import ExplainLane
    from game.service import ProtocolError
    live = Scorer(tiny_clip)
    lane = ExplainLane(live, max_queue=1)
    release, started = threading.Event(), threading.Event()
    try:
        first = threading.Thread(target=lambda: lane.run(lambda: (started.set(), release.wait(10))))
        first.start()
        assert started.wait(10)  # the lane is busy with the first job
        second = threading.Thread(target=lambda: lane.run(lambda: None))
        second.start()
        for _ in range(200):  # until the second job sits in the queue
            if lane._queue.qsize():
                break
            threading.Event().wait(0.01)
        with pytest.raises(ProtocolError) as caught:
            lane.run(lambda: None)
        assert caught.value.code == "busy"
        release.set()
        first.join(10)
        second.join(10)
        release.clear()
        started.clear()
        third = threading.Thread(target=lambda: lane.run(lambda: (started.set(), release.wait(10))))
        third.start()
        assert started.wait(10)
        with pytest.raises(ProtocolError) as late:  # queued, but not answered in time: busy, and dropped
            lane.run(lambda: None, timeout=0.1)
        assert late.value.code == "busy"
        release.set()
        third.join(10)
        got = lane.words("a red barn", live.embed_image(Image.new("RGB", (64, 64), (200, 30, 30))))
        assert got.words == ["a", "red", "barn"]  # and it works again
    finally:
        release.set()
        live.close()
        lane.close()
