"""Your history: streak and percentile rules, the days-played index and its backfill, history reads,
and one-time carry codes (single use, expiry on the test clock, wrong codes), on a real Redis."""
import json

import numpy as np
import pytest

from game import history as rules
from game import puzzles as pz
from game.store.history import HistoryStore
from tests.helpers.images import png_bytes

P1, P2, P3 = "player-one-aaaa", "player-two-bbbb", "player-three-cc"


# -- the rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("days, today, expected", [
    ([], 100, (0, 0)),
    ([100], 100, (1, 1)),  # played today only
    ([99], 100, (1, 1)),  # yesterday only: still current until today ends
    ([98], 100, (0, 1)),  # the day before yesterday: the streak is broken
    ([97, 98, 99, 100], 100, (4, 4)),
    ([97, 98, 99], 100, (3, 3)),  # not played today yet: the run to yesterday is current
    ([90, 91, 92, 93, 94, 99, 100], 100, (2, 5)),  # a gap: longest is older than current
    ([90, 91, 95, 96, 97], 100, (0, 3)),
    ([100, 100, 99], 100, (2, 2)),  # duplicates count once
])
def test_streaks(days, today, expected):
    assert rules.streaks(days, today) == expected


def test_percentile_is_the_share_placed_at_or_above():
    assert rules.percentile(1, 1) == 100.0
    assert rules.percentile(1, 10) == 100.0
    assert rules.percentile(10, 10) == 10.0
    assert rules.percentile(3, 4) == 50.0
    for rank, players in ((0, 3), (4, 3), (1, 0)):
        with pytest.raises(ValueError):
            rules.percentile(rank, players)


def test_carry_codes_avoid_look_alikes_and_normalize():
    for _ in range(200):
        code = rules.new_carry_code()
        assert len(code) == rules.CARRY_LENGTH and not set(code) & set("01ILOU")
    assert rules.normalize_carry_code(" k7qp-m2xr ") == "K7QPM2XR"
    assert rules.normalize_carry_code("K7QP M2XR") == "K7QPM2XR"
    assert rules.format_carry_code("K7QPM2XR") == "K7QP-M2XR"
    for bad, words in (("", "type the code"), ("K7QP", "this has 4"), ("K7QP-M2X0", "'0'"),
                       ("IIIIOOOO", "'I' 'O'")):
        with pytest.raises(rules.CarryCodeError) as info:
            rules.normalize_carry_code(bad)
        assert info.value.code == "bad_code" and words in str(info.value)


# -- the store --------------------------------------------------------------------------------------

@pytest.fixture
def pool(store):
    for i in range(6):
        store.add_target("photo", png_bytes((i * 40, 10, 10)), np.random.default_rng(i).standard_normal(16),
                         title=f"photo {i}")
    return store


@pytest.fixture
def hs(pool):
    return HistoryStore(pool)


def _ids(store):
    return [p.id for p in store.puzzles_for(store.today())]


def test_submit_writes_the_days_played_index_in_the_same_script(store, pool, hs, clock):
    ids = _ids(store)
    store.submit(P1, ids[0], "red", 0.2)
    store.submit(P1, ids[1], "again", 0.1)
    today = store.today()
    assert hs.played_days(P1) == [(today, pz.epoch_day(today))]
    # A refused submission (cap reached) writes nothing, the index included.
    capped = type(store)(store.r, store.model_id, max_submissions=1, clock=clock)
    capped.submit(P2, ids[0], "one", 0.1)
    store.r.delete(store.days_played_key(P2))
    with pytest.raises(ValueError):
        capped.submit(P2, ids[0], "two", 0.1)
    assert hs.played_days(P2) == []
    # Practice on a past day is not playing that day.
    clock.advance(days=1)
    store.submit(P3, ids[0], "late", 0.3, practice=True)
    assert hs.played_days(P3) == []


def test_history_days_streaks_ranks_and_best_caption(store, pool, hs, clock):
    day1 = store.today()
    ids = _ids(store)
    store.submit(P1, ids[0], "my first", 0.20)
    store.submit(P2, ids[0], "theirs", 0.30)
    store.submit(P2, ids[1], "theirs too", 0.10)
    store.submit(P3, ids[0], "low", 0.05)
    clock.advance(days=1)  # day 2: P1 plays, alone
    ids2 = _ids(store)
    store.submit(P1, ids2[1], "my best ever", 0.40)
    store.submit(P1, ids2[1], "worse later", 0.10)
    clock.advance(days=2)  # day 3 skipped; day 4: P1 plays with P2
    ids4 = _ids(store)
    store.submit(P2, ids4[0], "winner", 0.5)
    store.submit(P1, ids4[0], "second", 0.3)

    h = hs.history(P1)
    assert [d.date for d in h.days] == [day1, pz.add_days(day1, 1), pz.add_days(day1, 3)]
    assert h.days_played == 3 and (h.current_streak, h.longest_streak) == (1, 2)
    d1, d2, d4 = h.days
    assert (d1.total, d1.rank, d1.players, d1.percentile) == (0.20, 2, 3, pytest.approx(200 / 3))
    assert (d2.total, d2.rank, d2.players, d2.percentile) == (0.40, 1, 1, 100.0)
    assert (d4.rank, d4.players, d4.percentile) == (2, 2, 50.0)
    p = d1.puzzles
    assert [(x.index, x.score, x.rank, x.players) for x in p] == [(1, 0.20, 2, 3), (2, None, None, 1),
                                                                  (3, None, None, 0)]
    assert p[0].caption == "my first" and p[0].title.startswith("photo")
    best_day, best = h.best
    assert (best_day.date, best.index, best.caption, best.score) == (d2.date, 2, "my best ever", 0.40)
    # Another player's history never carries P1's captions, and a newcomer's is empty.
    other = hs.history(P2)
    assert all(x.caption != "my first" for d in other.days for x in d.puzzles)
    empty = hs.history(P3.replace("cc", "dd"))
    assert (empty.days, empty.best, empty.current_streak) == ([], None, 0)
    with pytest.raises(ValueError):
        hs.history("not valid!")


def test_yesterday_keeps_the_streak_until_today_ends(store, pool, hs, clock):
    store.submit(P1, _ids(store)[0], "day one", 0.1)
    clock.advance(days=1)
    store.submit(P1, _ids(store)[0], "day two", 0.1)
    clock.advance(days=1)
    clock.t = (clock.t // 86400 + 1) * 86400 - 1  # 23:59:59 the day after: not played yet
    assert (hs.history(P1).current_streak, hs.history(P1).longest_streak) == (2, 2)
    clock.advance(1)  # midnight: yesterday is now the day before
    assert (hs.history(P1).current_streak, hs.history(P1).longest_streak) == (0, 2)


def test_reindex_backfills_old_data_and_is_idempotent(store, pool, hs, clock):
    store.submit(P1, _ids(store)[0], "a", 0.1)
    store.submit(P2, _ids(store)[1], "b", 0.2)
    clock.advance(days=1)
    store.submit(P1, _ids(store)[0], "c", 0.1)
    expected = {pid: hs.played_days(pid) for pid in (P1, P2)}
    # Data from before the index: remove it, as if recorded by the old script.
    for pid in (P1, P2):
        store.r.delete(store.days_played_key(pid))
    assert hs.played_days(P1) == []
    assert hs.reindex() == (2, 3)
    assert {pid: hs.played_days(pid) for pid in (P1, P2)} == expected
    assert hs.reindex() == (2, 0)  # again: nothing new
    assert {pid: hs.played_days(pid) for pid in (P1, P2)} == expected


def test_carry_code_is_single_use(hs):
    code, expires = hs.create_carry_code(P1)
    assert expires == pytest.approx(hs.store.now() + rules.CARRY_TTL_S)
    assert 0 < hs.r.ttl(f"cap:carry:{code}") <= rules.CARRY_TTL_S + 3600
    assert hs.redeem_carry_code(rules.format_carry_code(code).lower()) == P1
    with pytest.raises(rules.CarryCodeError) as info:
        hs.redeem_carry_code(code)
    assert info.value.code == "used_code" and "already used" in str(info.value)
    assert json.loads(hs.r.get(f"cap:carry:{code}"))["player"] == P1  # kept to say "used"
    with pytest.raises(ValueError):
        hs.create_carry_code("bad id!")


def test_carry_code_expires_after_ten_minutes_on_the_clock(hs, clock):
    code, _ = hs.create_carry_code(P1)
    clock.advance(rules.CARRY_TTL_S - 1)
    late, _ = hs.create_carry_code(P2)
    clock.advance(2)
    with pytest.raises(rules.CarryCodeError) as info:
        hs.redeem_carry_code(code)
    assert info.value.code == "expired_code" and "expired" in str(info.value)
    assert hs.redeem_carry_code(late) == P2  # an expired try used nothing else up


def test_wrong_and_malformed_codes_are_refused(hs):
    code, _ = hs.create_carry_code(P1)
    wrong = next(c for c in ("A" * 8, "B" * 8) if c != code)
    with pytest.raises(rules.CarryCodeError) as info:
        hs.redeem_carry_code(wrong)
    assert info.value.code == "unknown_code"
    with pytest.raises(rules.CarryCodeError) as info:
        hs.redeem_carry_code("0000-0000")
    assert info.value.code == "bad_code"
    assert hs.redeem_carry_code(code) == P1  # wrong tries did not spoil the real code


def test_two_redeems_racing_only_one_wins(hs):
    import threading
    code, _ = hs.create_carry_code(P1)
    wins, errors = [], []

    def go():
        try:
            wins.append(hs.redeem_carry_code(code))
        except rules.CarryCodeError as exc:
            errors.append(exc.code)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins == [P1] and errors == ["used_code"] * 7


def test_memory_benchmark_runs_and_its_index_rebuilds_exactly():
    """bench/history.py keeps working (its report, not its numbers): small run, checked last line."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "bench" / "history.py"), "--players", "30", "--days", "3"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = re.match(r"^history: submissions=270 bytes_per_submission=(\d+) index_bytes_per_submission=([\d.]+) "
                     r"index_bytes_per_player_day=([\d.]+) index_share=([\d.]+)% history_read_p50_ms=([\d.]+) "
                     r"reindex_s=([\d.]+)$", last)
    assert match, last
    assert 0 < float(match.group(2)) < int(match.group(1))
    assert proc.stdout.startswith("CPU: ")


def test_backups_keep_the_index_but_not_live_carry_codes(store, pool, hs, tmp_path):
    from game.store import backup
    store.submit(P1, _ids(store)[0], "kept", 0.2)
    code, _ = hs.create_carry_code(P1)
    backup.export_all(store.r, tmp_path / "bk")
    keys = [json.loads(line)["key"] for line in (tmp_path / "bk" / "keys.jsonl").read_text().splitlines()]
    assert store.days_played_key(P1) in keys and not any(k.startswith("cap:carry:") for k in keys)
    store.r.flushall()
    backup.import_all(store.r, tmp_path / "bk")
    assert [d for d, _ in hs.played_days(P1)] == [store.today()]
    with pytest.raises(rules.CarryCodeError):
        hs.redeem_carry_code(code)
