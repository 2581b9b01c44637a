#!/usr/bin/env bash
# The tiny preset on CPU with 2 gloo ranks (fp32): DATA=prefix launch_scripts/cpu_demo.sh [overrides]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${DATA:?set DATA to the dataset prefix written by lfr-preprocess}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "${PYTHON_BIN:-$ROOT/.venv/bin}/deepspeed" --num_gpus "${NPROC:-2}" --master_port "${MASTER_PORT:-29511}" --module lfr_ds.train \
  --config "$ROOT/launch_scripts/configs/cpu-demo.yaml" data.path="$DATA" run_dir="${RUN_DIR:-runs/cpu-demo}" "$@"
