#!/usr/bin/env bash
# Every benchmark on a lent CUDA machine, in under 8 minutes, written where the
# book reads it: benchmarks/results/cuda.json (and policy-cuda.png).
#
#   bash benchmarks/gpu.sh              # the whole set, 400 s budget
#   BUDGET=240 bash benchmarks/gpu.sh   # a tighter budget
#   bash benchmarks/gpu.sh --only steps # extra arguments go to benchmarks.run
#
# The budget is shared out between the sections (benchmarks/run.py); a section
# or sweep point that would start past it is skipped and named in the JSON, and
# the JSON is rewritten after every section, so a cut-short run keeps its work.
# A hard timeout a minute past the budget ends a run that hangs.
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 1
BUDGET="${BUDGET:-400}"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
started=$(date +%s)
say() { echo "[gpu.sh +$(( $(date +%s) - started ))s] $*"; }

say "python: $PYTHON, budget ${BUDGET}s"
command -v nvidia-smi >/dev/null && nvidia-smi -L
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "torch sees no CUDA device: nothing to measure here (use make bench on a CPU)"
    exit 2
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
if ! "$PYTHON" -c "import lightly" 2>/dev/null; then
    # Often no registry is reachable from a lent machine: then the peer section
    # records that lightly is missing and the others run as usual.
    say "lightly missing; trying pip (the peer section skips if this fails)"
    timeout 30 "$PYTHON" -m pip install --quiet --retries 0 --timeout 5 "lightly>=1.5" \
        || say "no lightly"
fi

timeout --signal=INT --kill-after=30 "$(( BUDGET + 60 ))" \
    "$PYTHON" -u -m benchmarks.run --device cuda --budget "$BUDGET" "$@"
status=$?
if [ "$status" -ne 0 ]; then
    say "benchmarks.run exited with $status; whatever sections finished are kept"
fi
say "done; results: benchmarks/results/cuda.json"
exit "$status"
