#!/usr/bin/env bash
# GPT-2 1.5b, random-sampling baseline, one node, all its GPUs. DATA=prefix launch_scripts/gpt2-1.5b.sh [overrides]
source "$(dirname "$0")/common.sh"
single_node gpt2-1.5b "$@"
