#!/usr/bin/env bash
# Stage 2 (visual instruction tuning): start from the LLM, the vision tower and the stage-1 projector;
# train the projector and the whole LLM (and the vision tower where the recipe does). Writes a full
# mvlm checkpoint to OUTPUT_DIR that `load_pretrained_model(OUTPUT_DIR)` loads.
#
#   bash scripts/finetune.sh                                   # the Mipha-3B recipe, LLaVA's data layout
#   RECIPE=llava15 bash scripts/finetune.sh                    # LLaVA-1.5-7B; any recipe of mvlm/train/recipes.py
#   bash scripts/finetune.sh --model_name_or_path ./my-llm --vision_tower ./my-clip \
#       --pretrain_mm_mlp_adapter out/pretrain/mm_projector.safetensors \
#       --data_path d.json --image_folder imgs --output_dir out/finetune
#
# The recipe's numbers live in mvlm/train/recipes.py (`python -m mvlm.train.train --recipe mipha3b --stage 2
# --print-recipe` shows them). Every flag of `python -m mvlm.train.train` can be passed: the arguments come
# last, so they win. PRETRAIN_MM_MLP_ADAPTER= (empty) passes no projector, e.g. when MODEL_NAME_OR_PATH is an
# mvlm checkpoint to continue from. Environment variables, launcher, many machines, CPU/GPU flags and
# DRY_RUN=1: see scripts/_launch.sh. scripts/finetune_lora.sh and finetune_qlora.sh run the same stage with
# LoRA.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

mvlm_train_stage 2 "" "$@"
