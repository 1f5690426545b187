"""The scoring benchmark keeps working: run it on the tiny model and check its report (not its speed)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(r"^scoring: naive=([\d.]+)/s engine=([\d.]+)/s ratio=([\d.]+) typing_ratio=([\d.]+) "
                       r"p99_ms=([\d.]+) max_abs_diff=([\d.e+-]+)$")


def test_benchmark_runs_and_reports_exact_scores():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scoring.py"), "--model", "test-tiny",
                           "--captions", "40", "--players", "4", "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    assert float(match.group(6)) <= 1e-5  # every (b) and (c) score equals open_clip's own
    assert any(line.startswith("(c) typing:") for line in lines)
    assert "RANDOM WEIGHTS" in lines[0]  # random-weight runs say so


def test_benchmark_captions_are_distinct_and_realistic():
    # bench/ is scripts, not a package: load the file itself rather than putting bench/ on sys.path.
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_scoring", ROOT / "bench" / "scoring.py")
    scoring = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scoring)
    captions = scoring.make_captions(300, seed=7)
    assert captions == scoring.make_captions(300, seed=7)  # deterministic
    assert len(set(captions)) == 300
    assert not any(a != b and b.startswith(a) for a in captions for b in captions)
    words = [len(c.split()) for c in captions]
    assert min(words) >= 2 and max(words) <= 40 and 12 < sum(words) / len(words) < 30
    import random
    drafts = scoring.typing_drafts("a raccoon driving a tractor", random.Random(0))
    assert drafts[-1] == "a raccoon driving a tractor"
    assert "a raccoon" in drafts and len(drafts) == len(set(drafts))


def test_benchmark_sweeps_batch_sizes_and_prints_the_bf16_error():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scoring.py"), "--model", "test-tiny",
                           "--captions", "16", "--players", "2", "--quick", "--threads", "1",
                           "--sweep", "--precision", "bf16"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    sweep = [line for line in lines if re.match(r"^batch \d+: [\d.]+ captions/s, [\d.]+ drafts/s", line)]
    assert [line.split(":")[0] for line in sweep] == ["batch 1", "batch 4", "batch 16", "batch 64"]
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    assert 0 < float(match.group(6)) < 5e-2  # bf16 is opt-in because it is not exact: its error shows


def test_benchmark_lists_device_and_refuses_a_missing_gpu():
    import torch
    help_text = subprocess.run([sys.executable, str(ROOT / "bench" / "scoring.py"), "--help"],
                               capture_output=True, text=True, timeout=120, cwd=ROOT).stdout
    assert "--device" in help_text and "--precision" in help_text
    if torch.cuda.is_available():
        return  # the refusal below is for machines without a GPU
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scoring.py"), "--model", "test-tiny",
                           "--device", "cuda"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
