#!/usr/bin/env bash
# One prepared GPU check (issue 21): teacher -> knowledge -> search -> retrain -> evaluate on a few
# thousand SST-2 rows, the search-step ratio against NNI's GumbelDARTS, a DDP search when more than
# one GPU is present; JSON + Markdown results in OUT. Under 6 minutes on one GPU.
#   bash bench/gpu_check.sh OUT          # on a GPU machine
#   bash bench/gpu_check.sh --cpu OUT    # the same steps on the CPU, tiny (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
CPU=()
if [ "${1:-}" = --cpu ]; then CPU=(--cpu); shift; fi
OUT=${1:?usage: bash bench/gpu_check.sh [--cpu] OUT [more bench/gpu_check.py options]}
shift
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" bench/gpu_check.py "${CPU[@]}" --out "$OUT" "$@"
