#!/usr/bin/env bash
# Stage 2 with QLoRA: scripts/finetune_lora.sh (LLaVA-1.5's LoRA recipe) over a 4-bit NF4 LLM with
# double quantization (bitsandbytes). Launched with ZeRO-2 on GPUs, as LLaVA's QLoRA script was: ZeRO-3
# cannot partition 4-bit weights. OUTPUT_DIR defaults to ./checkpoints/<model>-qlora; load the result with
# `load_pretrained_model(OUTPUT_DIR, model_base=<the LLM>)`.
#
#   bash scripts/finetune_qlora.sh --model_name_or_path ./my-llm --vision_tower ./my-clip \
#       --pretrain_mm_mlp_adapter out/pretrain/mm_projector.safetensors --data_path d.json --image_folder imgs
#
# The numbers live in mvlm/train/recipes.py (with_qlora). Environment and flags work as in
# scripts/finetune_lora.sh, plus BITS, QUANT_TYPE and DOUBLE_QUANT (see scripts/_launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

mvlm_train_stage 2 qlora "$@"
