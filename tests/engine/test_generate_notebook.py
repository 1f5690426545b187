"""Our generate() is the 2021 notebook's loop: bench/generate.py --check-notebook runs both side by side.

Same seed, same z, same cutout boxes, 5 steps at 64 and 128 px on the tiny models,
CPU fp32: cutouts, losses and latents agree within 1e-4. The bilinear fast option,
checked the same way, must not (the check sees a resize that is not the notebook's).
"""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^notebook_match: steps=5 cutouts_max_abs_diff=(\S+) loss_max_abs_diff=(\S+) "
                  r"z_max_abs_diff=(\S+)$")


def test_check_notebook_meets_1e_4():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), "--check-notebook"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    last = proc.stdout.strip().splitlines()[-1]
    match = LINE.match(last)
    assert match, proc.stdout[-2000:] + proc.stderr[-2000:]
    cutouts, loss, z = (float(g) for g in match.groups())
    assert cutouts <= 1e-4 and loss <= 1e-4 and z <= 1e-4, last
    assert proc.returncode == 0


def test_check_notices_a_resize_that_is_not_the_notebooks():
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench" / "generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cutouts, loss, z = bench.check_notebook(steps=2, sizes=(128,), resample="bilinear")
    assert cutouts > 1e-3 and z > 1e-4
