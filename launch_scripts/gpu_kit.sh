#!/usr/bin/env bash
# The offline GPU kit (bench/gpu_kit.py): prepare it here, then install and run it on a bare GPU box
# (a PyTorch image: Python 3.12, its own CUDA torch, no DeepSpeed, no megatron-core, no internet).
#   launch_scripts/gpu_kit.sh prepare [--out DIR]   # here, with the package index: writes gpu_kit/
#   gpu_kit/launch_scripts/gpu_kit.sh install         # on the box: offline into $PYTHON (default python3)
#   gpu_kit/launch_scripts/gpu_kit.sh run [ARGS]      # on the box: GPU preflight, install, bench/gpu_check.py ARGS
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
shift || true
case $mode in
prepare) exec "${PYTHON:-.venv/bin/python}" bench/gpu_kit.py prepare "$@" ;;
install) exec "${PYTHON:-python3}" bench/gpu_kit.py install ;;
run)
    PY=${PYTHON:-python3}
    "$PY" bench/gpu_check.py --preflight "$@"  # GPU, bf16, NCCL, nvcc: one line and exit 2 if one is missing
    "$PY" bench/gpu_kit.py install
    exec "$PY" bench/gpu_check.py "$@"
    ;;
*)
    echo "usage: gpu_kit.sh prepare|install|run (see the comment at the top of this script)" >&2
    exit 2
    ;;
esac
