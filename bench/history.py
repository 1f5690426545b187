"""What the history page costs: Redis memory per submission (with the days-played index), the
index's own share, a history read, and the backfill (`players reindex`), on an embedded Redis.

P players play D days; each player-day makes S ranked submissions (one per puzzle, 60-character
captions) through `Store.submit`, so the measured bytes include everything a submission writes:
attempts, best, boards, day log, day totals and the player's days-played index. The index's share
is measured by deleting every index key (the memory drop) and then rebuilding it with `reindex`,
which must give back exactly the entries it had. The reference in the same run is the memory of
everything else a submission writes: the index's bytes as a share of it.

Usage: python bench/history.py [--players 1000] [--days 5] [--per-day 3] [--quick]
Last line: history: submissions=<n> bytes_per_submission=<b> index_bytes_per_submission=<i>
           index_bytes_per_player_day=<j> index_share=<pct> history_read_p50_ms=<r> reindex_s=<t>
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time

import numpy as np

from game.store import Store
from game.store import server as redis_server
from game.store.history import HistoryStore

START = 1_781_524_800.0  # 2026-06-15 12:00 UTC, like the tests' clock
CAPTION = "a red raccoon driving an old green tractor through the snow"  # 60 characters


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return "unknown CPU"


def used_memory(r) -> int:
    return int(r.info("memory")["used_memory"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, default=1000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--per-day", type=int, default=3, help="submissions per player-day (one per puzzle, 1-3)")
    parser.add_argument("--quick", action="store_true", help="200 players")
    args = parser.parse_args(argv)
    if args.quick:
        args.players = 200
    if not 1 <= args.per_day <= 3:
        parser.error("--per-day must be 1, 2 or 3 (a day has three puzzles)")
    with tempfile.TemporaryDirectory(prefix="captionary-bench-") as instance:
        r = redis_server.connect(instance)
        try:
            return run(r, args)
        finally:
            r.close()
            redis_server.stop(instance)


def run(r, args) -> int:
    # A bench-only server: fsync per write costs time, not memory.
    r.config_set("appendfsync", "no")
    t = [START]
    store = Store(r, "bench/random", clock=lambda: t[0])
    for i in range(6):
        store.add_target("photo", _png(i), np.random.default_rng(i).standard_normal(16), title=f"photo {i}")
    pids = [f"bench-player-{i:06d}" for i in range(args.players)]
    for d in range(args.days):  # freeze each day's puzzles first: their snapshots are not per submission
        t[0] = START + d * 86400
        store.freeze_day(store.today())
    base = used_memory(r)
    n = 0
    started = time.perf_counter()
    for d in range(args.days):
        t[0] = START + d * 86400
        ids = [p.id for p in store.puzzles_for(store.today())]
        for k, pid in enumerate(pids):
            for j in range(args.per_day):
                store.submit(pid, ids[j], CAPTION, 0.1 + ((k * 7 + j * 3 + d) % 97) / 400)
                n += 1
    submit_s = time.perf_counter() - started
    total = used_memory(r) - base
    hs = HistoryStore(store)
    reads = []
    for pid in pids[:50]:
        t0 = time.perf_counter()
        h = hs.history(pid)
        reads.append((time.perf_counter() - t0) * 1000)
        assert h.days_played == args.days
    before = {pid: hs.played_days(pid) for pid in pids[:20]}
    mem = used_memory(r)
    for pid in pids:
        r.delete(store.days_played_key(pid))
    index = mem - used_memory(r)
    t0 = time.perf_counter()
    days_read, added = hs.reindex()
    reindex_s = time.perf_counter() - t0
    assert added == args.players * args.days and {p: hs.played_days(p) for p in before} == before
    player_days = args.players * args.days
    print(f"CPU: {cpu_name()}; Redis {r.info('server')['redis_version']}; {args.players} players x {args.days} days "
          f"x {args.per_day} submissions ({n} submissions in {submit_s:.1f} s); "
          f"reindex read {days_read} days, added {added} entries")
    print(f"history: submissions={n} bytes_per_submission={total / n:.0f} index_bytes_per_submission={index / n:.1f} "
          f"index_bytes_per_player_day={index / player_days:.1f} index_share={100 * index / (total - index):.1f}% "
          f"history_read_p50_ms={statistics.median(reads):.2f} reindex_s={reindex_s:.2f}")
    return 0


def _png(i: int) -> bytes:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 40, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
