#!/usr/bin/env bash
# Stage 2 with QLoRA: scripts/finetune_lora.sh (LLaVA-1.5's LoRA recipe) over a 4-bit NF4 LLM with
# double quantization (bitsandbytes). Launched with ZeRO-2 on GPUs, as LLaVA's QLoRA script was: ZeRO-3
# cannot partition 4-bit weights. Load the result with `load_pretrained_model(OUTPUT_DIR, model_base=<the LLM>)`.
#
#   bash scripts/finetune_qlora.sh --model_name_or_path ./my-llm --vision_tower ./my-clip \
#       --pretrain_mm_mlp_adapter out/pretrain/mm_projector.safetensors --data_path d.json --image_folder imgs
#
# Environment and flags work as in scripts/finetune.sh (the arguments come last, so they win).
set -euo pipefail
SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# ---- QLoRA (QLoRA paper / LLaVA's finetune_qlora.sh): 4-bit NF4, double quantization ----
BITS="${BITS:-4}"
QUANT_TYPE="${QUANT_TYPE:-nf4}"
DOUBLE_QUANT="${DOUBLE_QUANT:-True}"
export DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-$SCRIPTS_DIR/zero2.json}"
export OUTPUT_SUFFIX="${OUTPUT_SUFFIX:--qlora}"  # ./checkpoints/<recipe>-qlora
export MVLM_SCRIPT="${MVLM_SCRIPT:-$(basename "$0")}"

exec bash "$SCRIPTS_DIR/finetune_lora.sh" \
    --bits "$BITS" \
    --quant_type "$QUANT_TYPE" \
    --double_quant "$DOUBLE_QUANT" \
    "$@"
