#!/usr/bin/env bash
# Stage 2 with LoRA: LLaVA-1.5's LoRA recipe over the chosen RECIPE's models, template, batch and epochs
# (scripts/finetune.sh holds those). LoRA adapters on every linear layer of the LLM at LEARNING_RATE; the
# projector fully trained at MM_PROJECTOR_LR; a vision tower that the recipe trains (Mipha-3B,
# LLaVA-Phi-3-mini) fully trained at MM_VISION_TOWER_LR. OUTPUT_DIR holds the adapter and the other
# trained weights; load it with `load_pretrained_model(OUTPUT_DIR, model_base=<the LLM>)`.
#
#   bash scripts/finetune_lora.sh --model_name_or_path ./my-llm --vision_tower ./my-clip \
#       --pretrain_mm_mlp_adapter out/pretrain/mm_projector.safetensors --data_path d.json --image_folder imgs
#
# Environment and flags work as in scripts/finetune.sh (the arguments come last, so they win).
set -euo pipefail
SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# ---- LLaVA-1.5's LoRA recipe (scripts/v1_5/finetune_lora.sh): r 128, alpha 256, 2e-4, projector 2e-5 ----
LORA_R="${LORA_R:-128}"
LORA_ALPHA="${LORA_ALPHA:-256}"
LORA_DROPOUT="${LORA_DROPOUT:-0.05}"
export LEARNING_RATE="${LEARNING_RATE:-2e-4}"
MM_PROJECTOR_LR="${MM_PROJECTOR_LR:-2e-5}"
export MM_VISION_TOWER_LR="${MM_VISION_TOWER_LR:-2e-5}"  # used only where the recipe trains the tower
export OUTPUT_SUFFIX="${OUTPUT_SUFFIX:--lora}"            # ./checkpoints/<recipe>-lora
export MVLM_SCRIPT="${MVLM_SCRIPT:-$(basename "$0")}"

exec bash "$SCRIPTS_DIR/finetune.sh" \
    --lora_enable True \
    --lora_r "$LORA_R" \
    --lora_alpha "$LORA_ALPHA" \
    --lora_dropout "$LORA_DROPOUT" \
    --mm_projector_lr "$MM_PROJECTOR_LR" \
    "$@"
