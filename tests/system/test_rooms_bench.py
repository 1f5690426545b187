"""bench/rooms_load.py end to end in its --quick mode (2 rooms x 3 players, one round, the tiny CLIP):
a real gunicorn, real players in the bench's own process, and the contract line it must print last.

No timing is asserted (speed is the benchmark's to report): only that the run completes, the
line parses, every player is counted, bars flowed, and nothing went wrong (errors=0)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"rooms: rooms=(\d+) players=(\d+) bar_updates_per_s=([\d.]+) p50_ms=([\d.]+) "
                  r"p99_ms=([\d.]+) errors=(\d+)")


def test_rooms_bench_quick_prints_its_contract_line_with_no_errors():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "rooms_load.py"), "--quick", "--model", "test-tiny"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    match = LINE.fullmatch(last)
    assert match, f"not the contract line: {last!r}\n{done.stdout[-2000:]}"
    rooms, players, per_s, p50, p99, errors = match.groups()
    assert (int(rooms), int(players), int(errors)) == (2, 6, 0), done.stdout[-2000:]
    assert float(per_s) > 0 and float(p50) <= float(p99)  # bars reached players; the figures are numbers
    # The judge line reads the server's /metrics: how busy the judge was and where its thread's time went.
    judge = next(line for line in done.stdout.splitlines() if line.startswith("judge: "))
    assert re.search(r"computing \d+% of the run", judge), judge
    if sys.platform == "linux":
        assert re.search(r"its thread was \d+% on a core, \d+% waiting for a core, \d+% blocked", judge), judge
