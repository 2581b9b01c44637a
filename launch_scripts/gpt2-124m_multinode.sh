#!/usr/bin/env bash
# GPT-2 124m, random-sampling baseline, across the nodes of $HOSTFILE (see common.sh for the environment).
#   DATA=prefix HOSTFILE=hosts MASTER_ADDR=node0 launch_scripts/gpt2-124m_multinode.sh [overrides]
source "$(dirname "$0")/common.sh"
multi_node gpt2-124m "$@"
