#!/usr/bin/env bash
# Stage 1 (feature alignment): train only the projector on image-caption pairs; the vision tower and the
# LLM stay frozen. Writes OUTPUT_DIR/mm_projector.safetensors for scripts/finetune.sh.
#
#   bash scripts/pretrain.sh                                   # the Mipha-3B recipe, LLaVA's data layout
#   RECIPE=llava15 bash scripts/pretrain.sh                    # LLaVA-1.5-7B; any recipe of mvlm/train/recipes.py
#   bash scripts/pretrain.sh --model_name_or_path ./my-llm --vision_tower ./my-clip \
#       --data_path d.json --image_folder imgs --output_dir out/pretrain --max_steps 20
#   DRY_RUN=1 bash scripts/pretrain.sh                         # print the command, run nothing
#
# The recipe's numbers live in mvlm/train/recipes.py (`python -m mvlm.train.train --recipe mipha3b --stage 1
# --print-recipe` shows them). Every flag of `python -m mvlm.train.train` can be passed: the arguments come
# last, so they win; environment variables (MODEL_NAME_OR_PATH=..., LEARNING_RATE=..., GLOBAL_BATCH=...),
# the launcher, many machines (HOSTFILE or NNODES) and the CPU/GPU flags: see scripts/_launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

mvlm_train_stage 1 "" "$@"
