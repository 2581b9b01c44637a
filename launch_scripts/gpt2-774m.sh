#!/usr/bin/env bash
# GPT-2 774m, random-sampling baseline, one node, all its GPUs. DATA=prefix launch_scripts/gpt2-774m.sh [overrides]
source "$(dirname "$0")/common.sh"
single_node gpt2-774m "$@"
