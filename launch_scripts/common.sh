# Shared by the per-preset launch scripts. Environment:
#   DATA         dataset prefix from lfr-preprocess (required)
#   RUN_DIR      output directory (default runs/<preset>-random)
#   NGPUS        GPUs per node (default: all that nvidia-smi lists)
#   HOSTFILE     multi-node only: DeepSpeed hostfile, one "hostname slots=N" line per node
#   MASTER_ADDR  multi-node only: address of the first node in the hostfile, reachable from all nodes
#   MASTER_PORT  rendezvous port (default 29500)
#
# Multi-node: the deepspeed launcher starts every node over pdsh/ssh from this one. Remote ranks see
# only the variables listed in ./.deepspeed_env (one NAME=value a line, read by the launcher) plus a
# few prefixes (NCCL_, PYTHON..., CUDA...). Typical NCCL settings for InfiniBand clusters:
#   NCCL_IB_HCA=mlx5            which HCAs to use
#   NCCL_SOCKET_IFNAME=eth0     interface for bootstrap / TCP fallback (not lo, not docker0)
#   NCCL_DEBUG=WARN             INFO when debugging hangs
#   NCCL_ASYNC_ERROR_HANDLING=1 fail fast instead of hanging when a peer dies
# run_dir and checkpoints should be on a filesystem every node sees (checkpoint.shared_fs=true, the
# default); with node-local disks pass checkpoint.shared_fs=false lfr.distribute=broadcast.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${DATA:?set DATA to the dataset prefix written by lfr-preprocess}"

single_node() {  # PRESET [overrides...]
  local preset=$1; shift
  local ngpus=${NGPUS:-$(nvidia-smi -L | wc -l)}
  exec deepspeed --num_gpus "$ngpus" --master_port "${MASTER_PORT:-29500}" --module lfr_ds.train \
    --config "$ROOT/launch_scripts/configs/$preset.yaml" data.path="$DATA" run_dir="${RUN_DIR:-runs/$preset-random}" "$@"
}

multi_node() {  # PRESET [overrides...]
  local preset=$1; shift
  : "${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile (one hostname slots=N line per node)}"
  : "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}"
  lfr-check-hostfile "$HOSTFILE" >&2  # the launcher would train on this node alone if it were missing
  exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
    --module lfr_ds.train --config "$ROOT/launch_scripts/configs/$preset.yaml" \
    data.path="$DATA" run_dir="${RUN_DIR:-runs/$preset-random}" "$@"
}
