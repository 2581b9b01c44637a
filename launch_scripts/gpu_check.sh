#!/usr/bin/env bash
# One prepared run for a lent H100/H200: bf16 GPT-2 124M and 1.5B under ZeRO-2 and ZeRO-3, a few steps
# each, then a table of tokens/s, TFLOP/s, MFU and peak memory. Under 8 minutes on one H100.
#   launch_scripts/gpu_check.sh          # GPU
#   launch_scripts/gpu_check.sh --cpu    # tiny fp32 on CPU: the same code path, run by the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" bench/gpu_check.py "$@"
