#!/usr/bin/env bash
# One prepared run for a lent H100/H200 (bench/gpu_check.py): bf16 GPT-2 124M and 1.5B under ZeRO-2 and
# ZeRO-3, then tokens/s, TFLOP/s, MFU, peak memory and LFR's overhead over random; last line JSON.
# On a bare GPU box without lfr-ds installed, use the offline kit instead: launch_scripts/gpu_kit.sh.
#   launch_scripts/gpu_check.sh          # GPU
#   launch_scripts/gpu_check.sh --cpu    # tiny fp32 on CPU: the same code path, run by the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" bench/gpu_check.py "$@"
