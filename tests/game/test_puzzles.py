"""Puzzle days: deterministic choice, freezing, scheduling, removal that never rewrites the past."""
import numpy as np
import time

import pytest

from tests.helpers.images import png_bytes
from game import puzzles as pz
from game.store import Store

P1, P2 = "puzzle-player-one", "puzzle-player-two"


def _add(store, n_photo, n_gan=0):
    ids = [store.add_target("photo", png_bytes((i, 1, 2)), np.random.default_rng(i).standard_normal(8),
                            title=f"photo {i}") for i in range(n_photo)]
    ids += [store.add_target("gan", png_bytes((i, 200, 2)), np.random.default_rng(100 + i).standard_normal(8),
                             prompt=f"prompt {i}", self_score=0.3 + i / 100) for i in range(n_gan)]
    return ids


def test_ids_and_dates_parse_strictly():
    assert pz.parse_puzzle_id("2026-06-15/2") == ("2026-06-15", 2)
    for bad in ("2026-06-15/0", "2026-13-01/1", "2026-06-15", "../etc/1", None, "2026-06-15/1/x"):
        with pytest.raises(ValueError):
            pz.parse_puzzle_id(bad)
    assert pz.parse_date("2026-02-28") == "2026-02-28"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        pz.parse_date("2026-02-30")
    assert pz.utc_date(1_781_524_800) == "2026-06-15"


def test_choice_is_deterministic_and_mixes_kinds():
    pool = {f"p{i}": "photo" for i in range(10)} | {f"g{i}": "gan" for i in range(10)}
    first = pz.choose_targets(pool, "2026-06-15", "m", 3)
    assert first == pz.choose_targets(dict(reversed(list(pool.items()))), "2026-06-15", "m", 3)
    assert len(set(first)) == 3
    kinds = {pool[t] for t in first}
    assert kinds == {"gan", "photo"}
    days = {tuple(pz.choose_targets(pool, pz.add_days("2026-06-15", d), "m", 3)) for d in range(20)}
    assert len(days) > 15  # different days get different sets
    assert pz.choose_targets({"p1": "photo"}, "2026-06-15", "m", 3) == ["p1"]
    assert pz.choose_targets({"p1": "photo", "p2": "photo", "g1": "gan"}, "2026-06-15", "m", 3,
                             ) != []
    # Recently shown targets are skipped while enough others remain.
    recent = first
    nxt = pz.choose_targets(pool, "2026-06-16", "m", 3, recent=recent)
    assert not set(nxt) & set(recent)


def test_every_process_sees_the_same_frozen_day(redis_instance, redis_client, clock, store):
    from game.store import server as redis_server
    _add(store, 4, 3)
    other = Store(redis_server.connect(redis_instance), store.model_id, clock=clock)
    first = store.puzzles_for(store.today())
    assert len(first) == 3 and all(p.frozen for p in first)
    assert [p.id for p in first] == [f"{store.today()}/{i}" for i in (1, 2, 3)]
    _add(other, 0, 0)
    other.add_target("photo", png_bytes((9, 9, 9)), np.ones(8), title="late")  # the pool changes...
    assert other.puzzles_for(other.today()) == first  # ...the frozen day does not
    assert store.get_puzzle(first[1].id) == first[1]
    assert store.get_puzzle(f"{store.today()}/4") is None
    assert store.days() == [store.today()]


def test_small_pool_is_a_preview_until_someone_submits(store):
    ids = _add(store, 2)
    preview = store.puzzles_for(store.today())
    assert len(preview) == 2 and not any(p.frozen for p in preview)
    store.submit(P1, preview[0].id, "hello", 0.1)  # a submission freezes the day
    _add(store, 0, 2)
    frozen = store.puzzles_for(store.today())
    assert [p.target_id for p in frozen] == [p.target_id for p in preview] and frozen[0].frozen
    assert sorted(p.target_id for p in frozen) == sorted(ids)


def test_future_days_have_no_puzzles_for_players_and_a_preview_for_admins(store, clock):
    _add(store, 5)
    tomorrow = pz.add_days(store.today(), 1)
    assert store.puzzles_for(tomorrow) == []
    preview = store.preview_day(tomorrow)
    assert len(preview) == 3 and not any(p.frozen for p in preview)
    assert store.days() == []


def test_schedule_sets_a_day_and_refuses_the_past_and_played_days(store, clock):
    ids = _add(store, 5, 1)
    tomorrow = pz.add_days(store.today(), 1)
    scheduled = store.schedule(tomorrow, [ids[4], ids[5]])
    assert [p.target_id for p in scheduled] == [ids[4], ids[5]] and scheduled[0].frozen
    yesterday = pz.add_days(store.today(), -1)
    with pytest.raises(ValueError, match="the day is over"):
        store.schedule(yesterday, ids[:3])
    today = store.puzzles_for(store.today())
    store.submit(P1, today[0].id, "played", 0.2)
    with pytest.raises(ValueError, match="already submitted"):
        store.schedule(store.today(), ids[:3])
    with pytest.raises(ValueError, match="only once"):
        store.schedule(tomorrow, [ids[0], ids[0]])
    with pytest.raises(ValueError, match="unknown"):
        store.schedule(tomorrow, ["tnope"])
    store.remove_target(ids[3])
    with pytest.raises(ValueError, match="not in the pool"):
        store.schedule(pz.add_days(store.today(), 2), [ids[3]])
    with pytest.raises(ValueError):
        store.schedule(tomorrow, [])


def test_removing_a_target_never_changes_past_boards_or_reveals(store, clock):
    ids = _add(store, 3, 1)
    gan = ids[3]
    today = store.today()
    store.schedule(today, [gan, ids[0]])
    puzzle = store.get_puzzle(f"{today}/1")
    store.submit(P1, puzzle.id, "my caption", 0.45)
    store.submit(P2, puzzle.id, "another", 0.20)
    tomorrow = pz.add_days(today, 1)
    store.schedule(tomorrow, [gan, ids[1]])
    clock.advance(days=1)
    before = store.reveal(puzzle.id)
    board = store.leaderboard(puzzle.id, with_captions=True)
    daily = store.daily_leaderboard(today)
    day_after = pz.add_days(today, 2)
    store.schedule(day_after, [gan, ids[2]])

    assert store.remove_target(gan) == [day_after]  # only the not-yet-started day is re-chosen
    assert store.get_target(gan).status == "removed"
    assert gan not in store.pool()
    assert store.reveal(puzzle.id) == before
    assert before.prompt == "prompt 0" and before.beat_machine == 1
    assert store.leaderboard(puzzle.id, with_captions=True) == board
    assert store.daily_leaderboard(today) == daily
    assert store.get_puzzle(puzzle.id).target_id == gan
    assert store.target_image(gan).startswith(b"\x89PNG")  # past puzzles still show their image
    # The running day (now "tomorrow") keeps its set; the future day no longer uses the target.
    assert store.puzzles_for(tomorrow)[0].target_id == gan
    assert gan not in [p.target_id for p in store.puzzles_for(day_after)]
    with pytest.raises(KeyError):
        store.remove_target("tmissing")


def test_targets_keep_their_fields_and_filters(store):
    gan = store.add_target("gan", png_bytes((1, 2, 3)), np.ones(8), prompt="a raccoon driving a tractor",
                           self_score=0.564, seed=7, settings={"size": 256}, history=[0.1, 0.5],
                           hint_word="raccoon", hint_score=0.31)
    photo = store.add_target("photo", png_bytes((3, 2, 1)), np.ones(8) * -1, title="cat", attribution="CC0")
    t = store.get_target(gan)
    assert (t.kind, t.prompt, t.self_score, t.seed, t.settings, t.history, t.hint_word, t.status) == (
        "gan", "a raccoon driving a tractor", 0.564, 7, {"size": 256}, [0.1, 0.5], "raccoon", "ready")
    assert abs(np.linalg.norm(store.target_embedding(photo)) - 1) < 1e-6
    assert [x.id for x in store.list_targets(kind="photo")] == [photo]
    assert [x.id for x in store.list_targets(min_score=0.5)] == [gan]
    assert store.list_targets(min_score=0.6) == []
    with pytest.raises(ValueError, match="already target"):
        store.add_target("photo", png_bytes((3, 2, 1)), np.ones(8))
    with pytest.raises(ValueError, match="kind"):
        store.add_target("drawing", png_bytes((5, 5, 5)), np.ones(8))
    with pytest.raises(ValueError, match="PNG"):
        store.add_target("photo", b"GIF89a...", np.ones(8))
    with pytest.raises(ValueError, match="prompt"):
        store.add_target("gan", png_bytes((6, 6, 6)), np.ones(8))
    with pytest.raises(ValueError, match="dimensions"):
        store.add_target("photo", png_bytes((7, 7, 7)), np.ones(4))
    # Another model sees the image but has no embedding: pending, not in its pool.
    other = Store(store.r, "ViT-B-32/openai", clock=store.clock)
    assert other.get_target(photo).status == "pending" and other.pool() == {}


def test_looking_at_arbitrary_dates_writes_nothing(store, redis_client):
    _add(store, 5)
    keys = set(redis_client.keys("*"))
    for date in ("1999-01-01", "2026-06-14", "2026-06-16", "2999-12-31"):
        assert store.puzzles_for(date) == []  # never a puzzle day: nothing from the pool
        assert len(store.preview_day(date)) == 3 and not store.preview_day(date)[0].frozen
    assert store.get_puzzle("1999-01-01/1") is None
    assert set(redis_client.keys("*")) == keys and store.days() == []


def test_only_shown_targets_are_public(store, clock):
    ids = _add(store, 6)
    today = store.puzzles_for(store.today())
    assert store.shown_target_ids() == {p.target_id for p in today}
    tomorrow = pz.add_days(store.today(), 1)
    unseen = sorted(set(ids) - store.shown_target_ids())
    store.schedule(tomorrow, unseen[:2])
    assert not store.shown_target_ids() & set(unseen)  # a scheduled day is not shown before it starts
    clock.advance(86400)
    assert set(unseen[:2]) <= store.shown_target_ids()  # ...and is once it has
    assert {p.target_id for p in today} <= store.shown_target_ids()  # past days stay public


def test_submission_for_a_day_that_is_not_today_by_the_shared_clock_is_refused(redis_client):
    from game.store import RedisClock, Store, SubmissionError
    real = Store(redis_client, "test-tiny/random")
    assert isinstance(real.clock, RedisClock)
    sec, _ = redis_client.time()
    assert abs(real.now() - sec) < 2
    _add(real, 3)
    puzzle = real.puzzles_for(real.today())[0]
    # A web process whose clock runs two days late sees that old day as today; the submission
    # script checks the day against the Redis server's TIME itself and refuses.
    two_days_ago = Store(redis_client, "test-tiny/random", clock=lambda: sec - 2 * 86400)
    old = two_days_ago.puzzles_for(two_days_ago.today())[0]
    skewed = Store(redis_client, "test-tiny/random")
    skewed.clock._offset, skewed.clock._next = sec - 2 * 86400 - time.monotonic(), float("inf")
    assert skewed.day_state(old.date) == "today"
    with pytest.raises(SubmissionError, match="not today's"):
        skewed.submit(P1, old.id, "late", 0.2)
    assert two_days_ago.board_size(old.id) == 0
    assert real.submit(P1, puzzle.id, "on time", 0.2).submissions_left == real.max_submissions - 1
