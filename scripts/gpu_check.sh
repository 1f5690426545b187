#!/usr/bin/env bash
# The GPU run, in one go (under 8 minutes on one H100/H200: the steps' time limits add up to 480 s): the notebook check, the gpu-marked
# tests, the generation benchmark (full), and the scoring benchmark on CUDA when bench/scoring.py
# has a --device option. Installs nothing: it uses .venv/bin/python if present, else $PYTHON or
# python3, with the checkout on PYTHONPATH.
#
# Everything printed goes to gpu_check.log; the machine-readable lines (notebook_match:,
# generate:, generate_batch:, self_score:, scoring:, the pytest summary) also go to
# gpu_lines.txt. Both land in $OUT when it is set, else in the current directory.
#
# GPU_CHECK_TINY=1: the same steps at tiny sizes and on the tiny test models, on the CPU when
# there is no GPU (to try the script anywhere; its figures mean nothing).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DEST=${OUT:-.}
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
LINES="$DEST/gpu_lines.txt"
: >"$LOG"
: >"$LINES"
TINY=${GPU_CHECK_TINY:-0}
HAS_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
DEVICE=cpu
[[ "$HAS_CUDA" == 1 ]] && DEVICE=cuda
STATUS=0

note() { echo "$*" | tee -a "$LOG" "$LINES"; }

# step NAME SECONDS CMD...: run with a time limit, keep all output, copy the contract lines.
step() {
    local name=$1 limit=$2
    shift 2
    note "== $name: $* (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$DEST/.step.out" 2>&1
    local rc=$?
    cat "$DEST/.step.out" >>"$LOG"
    # Per-size lines print as soon as measured (indented), so a step cut short still leaves its figures.
    sed -E 's/^[[:space:]]+//' "$DEST/.step.out" |
        grep -E '^(notebook_match|cutouts|generate|generate_batch|self_score|scoring): |^device: |^reference: |(passed|failed|skipped|errors?|deselected)\b.* in [0-9.]+s' |
        awk '!seen[$0]++' >>"$LINES"
    rm -f "$DEST/.step.out"
    note "== $name: exit $rc after $((SECONDS - start))s"
    [[ $rc -ne 0 ]] && STATUS=1
    return 0
}

note "gpu_check: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') tiny=$TINY device=$DEVICE"
if [[ "$HAS_CUDA" == 1 ]]; then
    note "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
fi
note "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
note "torch: $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"

step "notebook check" 90 "$PY" bench/generate.py --check-notebook
step "gpu tests" 80 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/system/test_gpu.py
if [[ "$TINY" == 1 ]]; then
    step "generation benchmark (tiny)" 300 "$PY" bench/generate.py --device "$DEVICE" --quick --tiny-models \
        --sizes 64 --repeats 1 --seeds 2 --batch-size 64 --score-steps 2
else
    step "generation benchmark" 240 "$PY" bench/generate.py --device "$DEVICE"
fi
if [[ "$TINY" == 1 ]]; then
    step "cutout timing (tiny)" 120 "$PY" bench/generate.py --device "$DEVICE" --cutouts --sizes 64 128 --cutn 8
else
    step "cutout timing" 20 "$PY" bench/generate.py --device "$DEVICE" --cutouts
fi
if "$PY" bench/scoring.py --help 2>/dev/null | grep -q -- '--device'; then
    if [[ "$TINY" == 1 ]]; then
        step "scoring benchmark (tiny)" 300 "$PY" bench/scoring.py --device "$DEVICE" --model test-tiny --quick \
            --captions 40 --players 4
    else
        step "scoring benchmark" 50 "$PY" bench/scoring.py --device "$DEVICE" --quick
    fi
else
    note "== scoring benchmark: skipped (bench/scoring.py has no --device option yet)"
fi
note "gpu_check: done $(date -u +%FT%TZ), status $STATUS; all output in $LOG"
exit $STATUS
