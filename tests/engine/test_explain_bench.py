"""bench/explain.py keeps working: run it briefly on the tiny model and check its report (not its speed)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(r"^explain: words=12 words_p50_ms=([\d.]+) heatmap_p50_ms=([\d.]+) max_abs_diff=([\d.e+-]+)$")


def test_benchmark_runs_and_reports_exact_word_effects():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "explain.py"), "--model", "test-tiny", "--quick",
                           "--seconds", "2", "--typists", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    assert float(match.group(3)) <= 1e-5  # every word effect equals scoring its two captions on their own
    assert re.match(r"^typing: \d+ drafts alone .* p99_ratio=[\d.]+ \(target <= 1.2\)$", lines[-2]), lines[-2]
    assert "RANDOM WEIGHTS" in lines[0] and "CPU " in lines[0]  # random weights and the CPU are named
