"""Store: submissions (cap, best, rank, ties, daily sum), boards, practice, reveal, rate limits, pub/sub."""
import json
import threading

import numpy as np
import pytest

from tests.helpers.images import png_bytes
from game.store import Store, SubmissionError

P1, P2, P3 = "player-one-aaaa", "player-two-bbbb", "player-three-cc"


def _vec(seed, dim=16):
    return np.random.default_rng(seed).standard_normal(dim)


@pytest.fixture
def day(store):
    """Four photos and a GAN target in the pool; returns today's puzzle ids."""
    for i in range(4):
        store.add_target("photo", png_bytes((i * 50, 10, 10)), _vec(i), title=f"photo {i}")
    store.add_target("gan", png_bytes((0, 200, 0)), _vec(9), prompt="a raccoon driving a tractor",
                     self_score=0.30)
    return [p.id for p in store.puzzles_for(store.today())]


def test_submit_records_best_rank_and_cap(store, day):
    pid = day[0]
    first = store.submit(P1, pid, "a red square", 0.21)
    assert (first.best, first.rank, first.submissions_left, first.improved) == (0.21, 1, 9, True)
    worse = store.submit(P1, pid, "a square", 0.11)
    assert (worse.score, worse.best, worse.improved, worse.submissions_left) == (0.11, 0.21, False, 8)
    assert store.best(P1, pid) == 0.21
    assert [a.caption for a in store.attempts(P1, pid)] == ["a red square", "a square"]
    for i in range(8):
        store.submit(P1, pid, f"try {i}", 0.1)
    with pytest.raises(SubmissionError) as info:
        store.submit(P1, pid, "one too many", 0.9)
    assert info.value.code == "cap_reached"
    assert store.best(P1, pid) == 0.21  # the refused one changed nothing
    assert len(store.attempts(P1, pid)) == 10
    assert len(store.submission_log(store.today())) == 10
    # The cap is per puzzle: another puzzle of the same day is still open.
    assert store.submit(P1, day[1], "fresh", 0.1).submissions_left == 9


def test_ties_go_to_the_earlier_submission(store, day, clock):
    pid = day[0]
    store.submit(P2, pid, "first to 0.25", 0.25)
    clock.advance(5)
    store.submit(P1, pid, "second to 0.25", 0.25)
    assert store.rank(P2, pid) == 1 and store.rank(P1, pid) == 2
    # Improving then falling back to an equal score keeps the earlier time of the best.
    store.submit(P3, pid, "higher", 0.30)
    board = store.leaderboard(pid)
    assert [(e.rank, e.player_id, e.score) for e in board] == [(1, P3, 0.30), (2, P2, 0.25), (3, P1, 0.25)]
    # P1 repeating the same score later does not overtake P2 (not an improvement).
    assert store.submit(P1, pid, "again", 0.25).improved is False
    assert store.rank(P1, pid) == 3


def test_negative_scores_rank_correctly(store, day):
    pid = day[0]
    store.submit(P1, pid, "a", -0.05)
    store.submit(P2, pid, "b", -0.02)
    store.submit(P3, pid, "c", -0.05)
    assert [e.player_id for e in store.leaderboard(pid)] == [P2, P1, P3]
    assert store.leaderboard(pid)[0].score == -0.02


def test_daily_board_sums_each_players_best(store, day):
    store.submit(P1, day[0], "a", 0.20)
    store.submit(P1, day[0], "b", 0.25)  # best on puzzle 1 is 0.25, not 0.45
    store.submit(P1, day[1], "c", 0.10)
    store.submit(P2, day[0], "d", 0.30)
    store.submit(P2, day[2], "e", 0.04)
    assert store.daily_total(P1, store.today()) == pytest.approx(0.35)
    board = store.daily_leaderboard(store.today())
    assert [(e.player_id, round(e.score, 6)) for e in board] == [(P1, 0.35), (P2, 0.34)]
    assert store.daily_rank(P2, store.today()) == 2
    assert [e.player_id for e in store.daily_leaderboard(store.today(), limit=1)] == [P1]
    assert store.daily_leaderboard(store.today(), limit=0) == [] and store.leaderboard(day[0], limit=0) == []
    assert len(store.leaderboard(day[0], limit=1)) == 1 and store.board_size(day[0]) == 2


def test_daily_tie_goes_to_who_reached_the_total_first(store, day):
    store.submit(P1, day[0], "a", 0.20)
    store.submit(P2, day[0], "b", 0.10)
    store.submit(P2, day[1], "c", 0.10)  # P2 reaches 0.20 after P1 did
    assert [e.player_id for e in store.daily_leaderboard(store.today())] == [P1, P2]


def test_captions_hidden_while_the_day_runs_and_revealed_after(store, day, clock):
    pid = day[0]
    store.submit(P1, pid, "secret words", 0.4)
    assert store.leaderboard(pid, with_captions=True)[0].caption is None
    with pytest.raises(ValueError, match="revealed after"):
        store.reveal(pid)
    clock.advance(days=1)
    assert store.leaderboard(pid, with_captions=True)[0].caption == "secret words"
    assert store.leaderboard(pid)[0].caption is None


def test_reveal_counts_players_who_beat_the_machine(store, day, clock):
    gan = next(p for p in store.puzzles_for(store.today()) if p.kind == "gan")
    store.submit(P1, gan.id, "raccoon tractor", 0.35)
    store.submit(P2, gan.id, "tractor", 0.30)  # equal is not beating
    store.submit(P3, gan.id, "farm", 0.10)
    clock.advance(days=1)
    reveal = store.reveal(gan.id)
    assert reveal.prompt == "a raccoon driving a tractor" and reveal.self_score == 0.30
    assert (reveal.players, reveal.beat_machine) == (3, 1)
    assert reveal.best_scores == [0.35, 0.30, 0.10]
    assert [e.caption for e in reveal.top] == ["raccoon tractor", "tractor", "farm"]


def test_past_days_are_practice_only_and_never_change_boards(store, day, clock):
    pid = day[0]
    store.submit(P1, pid, "ranked", 0.30)
    clock.advance(days=1)
    with pytest.raises(SubmissionError) as info:
        store.submit(P2, pid, "late", 0.9)
    assert info.value.code == "day_over"
    result = store.submit(P2, pid, "practice", 0.25, practice=True)
    assert result.practice and result.submissions_left is None
    assert result.rank == 2  # where it would have placed
    assert store.submit(P2, pid, "better practice", 0.5, practice=True).rank == 1
    assert store.best(P2, pid, practice=True) == 0.5
    assert [e.player_id for e in store.leaderboard(pid)] == [P1]
    assert store.best(P2, pid) is None
    assert [e.player_id for e in store.daily_leaderboard(day[0][:10])] == [P1]
    assert [a.caption for a in store.attempts(P2, pid, practice=True)] == ["practice", "better practice"]


def test_bad_submissions_are_refused_with_codes(store, day):
    cases = [(P1, day[0], "", 0.1, "bad_caption"), (P1, day[0], "lone \ud800 surrogate", 0.1, "bad_caption"),
             (P1, day[0], "   ", 0.1, "bad_caption"), (P1, day[0], None, 0.1, "bad_caption"), (P1, day[0], "x" * 201, 0.1, "bad_caption"),
             (P1, day[0], "ok", float("nan"), "bad_score"), (P1, day[0], "ok", 3.0, "bad_score"),
             (P1, day[0], "ok", "high", "bad_score"), ("x", day[0], "ok", 0.1, "bad_player"),
             (P1, "2026-06-15/9", "ok", 0.1, "unknown_puzzle"), (P1, "nonsense", "ok", 0.1, "unknown_puzzle"),
             (P1, "2026-06-16/1", "ok", 0.1, "unknown_puzzle"),  # a future day nobody scheduled has no puzzles
             (P1, "2026-06-17/1", "ok", 0.1, "not_started")]
    store.schedule("2026-06-17", [store.get_puzzle(day[0]).target_id])
    for player, puzzle, caption, score, code in cases:
        with pytest.raises(SubmissionError) as info:
            store.submit(player, puzzle, caption, score)
        assert info.value.code == code, (puzzle, caption, score)
    assert store.leaderboard(day[0]) == []


def test_concurrent_submissions_lose_nothing(redis_instance, redis_client, clock, day):
    """Many threads, each with its own connection, hammer one puzzle: the boards stay consistent."""
    from game.store import server as redis_server
    pid = day[0]
    players = [f"concurrent-player-{i:02d}" for i in range(8)]
    expected = {}
    rng = np.random.default_rng(1)
    plan = {p: [round(float(x), 6) for x in rng.uniform(-0.1, 0.5, 10)] for p in players}
    errors = []

    def play(player):
        try:
            s = Store(redis_server.connect(redis_instance), "test-tiny/random", clock=clock)
            for i, score in enumerate(plan[player]):
                s.submit(player, pid, f"{player} caption {i}", score)
                s.submit(player, day[1], f"{player} other {i}", score / 2)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=play, args=(p,)) for p in players]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = Store(redis_client, "test-tiny/random", clock=clock)
    for p in players:
        expected[p] = max(plan[p])
        assert store.best(p, pid) == expected[p]
        assert len(store.attempts(p, pid)) == 10
        assert store.daily_total(p, store.today()) == pytest.approx(max(plan[p]) + max(s / 2 for s in plan[p]), abs=2e-6)
    board = store.leaderboard(pid, limit=100)
    assert [e.score for e in board] == sorted(expected.values(), reverse=True)
    assert len(store.submission_log(store.today(), count=10_000)) == 8 * 20


def test_unicode_captions_round_trip(store, day, clock):
    caption = 'un café "très" bon \\ / 猫 🐈 </script>'
    store.submit(P1, day[0], caption, 0.3)
    assert store.attempts(P1, day[0])[0].caption == caption
    clock.advance(days=1)
    assert store.leaderboard(day[0], with_captions=True)[0].caption == caption
    assert store.submission_log(day[0][:10])[0]["caption"] == caption


def test_demo_and_real_models_never_share_boards(redis_client, clock, day, store):
    store.submit(P1, day[0], "demo", 0.2)
    real = Store(redis_client, "ViT-B-32/openai", clock=clock)
    assert real.puzzles_for(real.today()) == []  # no embeddings for that model yet
    assert real.leaderboard(day[0]) == [] and real.daily_leaderboard(real.today()) == []


def test_nicknames_show_on_boards(store, day):
    store.submit(P1, day[0], "a", 0.2)
    store.submit(P2, day[0], "b", 0.1)
    assert store.set_nickname(P1, "  Ada   Lovelace ") == "Ada Lovelace"
    with pytest.raises(ValueError):
        store.set_nickname(P2, "shithead")
    names = [e.nickname for e in store.leaderboard(day[0])]
    assert names[0] == "Ada Lovelace" and names[1].startswith("player-") and P2 not in names[1]


def test_token_bucket_allows_a_burst_then_refuses(store):
    # A negligible refill rate makes the outcome independent of timing.
    assert [store.take_token("drafts:p1", 0.0001, 3) for _ in range(5)] == [True, True, True, False, False]
    assert store.take_token("drafts:p2", 0.0001, 3) is True  # buckets are per key
    with pytest.raises(ValueError):
        store.take_token("x", 0, 1)


def test_token_bucket_refills_at_its_rate_up_to_the_burst(store, redis_client):
    key = "cap:rl:submits:p1"
    assert [store.take_token("submits:p1", 0.01, 2) for _ in range(3)] == [True, True, False]
    # Move the bucket's last update 1000 s into the past: 10 tokens' worth, capped at the burst of 2.
    ts = float(redis_client.hget(key, "ts"))
    redis_client.hset(key, "ts", f"{ts - 1000:.6f}")
    assert [store.take_token("submits:p1", 0.01, 2) for _ in range(3)] == [True, True, False]
    assert redis_client.pttl(key) > 0  # idle buckets expire


def test_publish_board_reaches_subscribers(store, redis_client):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(store.board_channel("2026-06-15/1"))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    assert store.publish_board("2026-06-15/1", {"type": "board", "top": [1, 2]}) == 1
    message = pubsub.get_message(timeout=5)
    assert json.loads(message["data"]) == {"type": "board", "top": [1, 2]}
    pubsub.close()


def test_boards_match_a_simple_model_of_the_rules(redis_client, clock):
    """Property test: for any sequence of submissions, boards rank by (best desc, time it was reached asc)."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    scores = st.sampled_from([-0.1, 0.0, 0.1, 0.2, 0.2000001, 0.25, 0.3])  # few values: many ties
    plays = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1), scores), min_size=1, max_size=25)

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(plays)
    def check(sequence):
        redis_client.flushall()
        store = Store(redis_client, "test-tiny/random", max_submissions=100, clock=clock)
        for i in range(2):
            store.add_target("photo", png_bytes((i, 0, 0)), _vec(i))
        puzzles = [p.id for p in store.puzzles_for(store.today())]
        best, reached, total_reached = {}, {}, {}
        for step, (player, puzzle, score) in enumerate(sequence):
            pid = f"model-player-{player}"
            store.submit(pid, puzzles[puzzle], f"c{step}", score)
            key = (pid, puzzle)
            if key not in best or round(score * 1e6) > round(best[key] * 1e6):
                best[key], reached[key] = score, step
                total_reached[pid] = step
        for puzzle in range(2):
            rows = [(pid, s, reached[(pid, p)]) for (pid, p), s in best.items() if p == puzzle]
            want = [pid for pid, s, t in sorted(rows, key=lambda r: (-round(r[1] * 1e6), r[2]))]
            assert [e.player_id for e in store.leaderboard(puzzles[puzzle], limit=10)] == want
        totals = {}
        for (pid, _), s in best.items():
            totals[pid] = totals.get(pid, 0) + round(s * 1e6)
        want = sorted(totals, key=lambda pid: (-totals[pid], total_reached[pid]))
        board = store.daily_leaderboard(store.today())
        assert [e.player_id for e in board] == want
        assert [round(e.score * 1e6) for e in board] == [totals[p] for p in want]

    check()
