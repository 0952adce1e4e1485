#!/usr/bin/env bash
# Stage 2 with LoRA: LLaVA-1.5's LoRA recipe over the chosen RECIPE's models, template, data, batch and
# epochs. LoRA adapters (r 128, alpha 256) on every linear layer of the LLM at 2e-4; the projector fully
# trained at 2e-5; a vision tower that the recipe trains (Mipha, LLaVA-Phi-3-mini) fully trained at 2e-5.
# OUTPUT_DIR (default ./checkpoints/<model>-lora) holds the adapter and the other trained weights; load it
# with `load_pretrained_model(OUTPUT_DIR, model_base=<the LLM>)`.
#
#   bash scripts/finetune_lora.sh --model_name_or_path ./my-llm --vision_tower ./my-clip \
#       --pretrain_mm_mlp_adapter out/pretrain/mm_projector.safetensors --data_path d.json --image_folder imgs
#
# The numbers live in mvlm/train/recipes.py (with_lora). Environment and flags work as in
# scripts/finetune.sh (the arguments come last, so they win), plus LORA_R, LORA_ALPHA, LORA_DROPOUT and
# MM_PROJECTOR_LR (see scripts/_launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

mvlm_train_stage 2 lora "$@"
