#!/usr/bin/env bash
# GPT-2 124m, random-sampling baseline, one node, all its GPUs. DATA=prefix launch_scripts/gpt2-124m.sh [overrides]
source "$(dirname "$0")/common.sh"
single_node gpt2-124m "$@"
