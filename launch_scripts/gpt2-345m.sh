#!/usr/bin/env bash
# GPT-2 345m, random-sampling baseline, one node, all its GPUs. DATA=prefix launch_scripts/gpt2-345m.sh [overrides]
source "$(dirname "$0")/common.sh"
single_node gpt2-345m "$@"
