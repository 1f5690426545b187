"""bench/gil_convoy.py keeps working: run it briefly on the tiny model and check its report (not its speed)."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(r"^gil_convoy: busy=2 scripted_ms=([\d.]+) eager_ms=([\d.]+) ratio=([\d.]+) "
                       r"alone_scripted_ms=([\d.]+) alone_eager_ms=([\d.]+)$")


def test_benchmark_runs_and_reports_both_paths():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gil_convoy.py"), "--model", "test-tiny",
                           "--busy", "2", "--batches", "5", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert LAST_LINE.match(lines[-1]), lines[-1]
    assert "RANDOM WEIGHTS" in lines[0] and "GIL switch 1.0 ms" in lines[0]
