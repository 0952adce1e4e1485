#!/usr/bin/env bash
# Stage 1 (feature alignment): train only the projector on image-caption pairs; the vision tower and the
# LLM stay frozen. Writes OUTPUT_DIR/mm_projector.safetensors for scripts/finetune.sh.
#
#   bash scripts/pretrain.sh                                   # the Mipha-3B recipe, LLaVA's data layout
#   RECIPE=llava15 bash scripts/pretrain.sh                    # LLaVA-1.5-7B; or RECIPE=phi3mini
#   bash scripts/pretrain.sh --model_name_or_path ./my-llm --vision_tower ./my-clip \
#       --data_path d.json --image_folder imgs --output_dir out/pretrain --max_steps 20
#
# Every variable below can be set from the environment (MODEL_NAME_OR_PATH=... bash scripts/pretrain.sh),
# and every flag of `python -m mvlm.train.train` can be passed: the arguments come last, so they win.
# GLOBAL_BATCH is kept whatever the hardware: gradient_accumulation_steps = GLOBAL_BATCH /
# (PER_DEVICE_BATCH x NPROC x NNODES, or x HOSTFILE's slots), with PER_DEVICE_BATCH taken from
# --per_device_train_batch_size when given. Launcher, many machines (HOSTFILE or NNODES), CPU/GPU flags
# and DRY_RUN=1: see scripts/_launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

# ---- the recipes (seeds: 003 Mipha, 004 LLaVA-1.5, 000 XTuner LLaVA-Phi-3-mini) ----
RECIPE="${RECIPE:-mipha3b}"
case "$RECIPE" in
    mipha3b)  # Mipha-3B: Phi-2 + SigLIP-so400m/384; 256 x 1e-3, 1 epoch, max length 2048 (32/GPU on 8 GPUs)
        recipe_name=mipha-3b
        recipe_llm=microsoft/phi-2
        recipe_tower=google/siglip-so400m-patch14-384
        recipe_version=plain
        recipe_global_batch=256 recipe_per_device_batch=32 recipe_lr=1e-3 recipe_epochs=1
        recipe_max_length=2048
        ;;
    llava15)  # LLaVA-1.5-7B: Vicuna-7B-v1.5 + CLIP-L/336; 256 x 1e-3, 1 epoch, max length 2048 (32/GPU on 8)
        recipe_name=llava-v1.5-7b
        recipe_llm=lmsys/vicuna-7b-v1.5
        recipe_tower=openai/clip-vit-large-patch14-336
        recipe_version=plain
        recipe_global_batch=256 recipe_per_device_batch=32 recipe_lr=1e-3 recipe_epochs=1
        recipe_max_length=2048
        ;;
    phi3mini)  # XTuner LLaVA-Phi-3-mini: Phi-3-mini-4k + CLIP-L/336, phi3_chat prompts even in stage 1;
        # 256 (16/GPU x 2 accumulation x 8 GPUs) x 1e-3, 1 epoch; 4096 tokens, images included.
        recipe_name=llava-phi-3-mini
        recipe_llm=microsoft/Phi-3-mini-4k-instruct
        recipe_tower=openai/clip-vit-large-patch14-336
        recipe_version=phi3_chat
        recipe_global_batch=256 recipe_per_device_batch=16 recipe_lr=1e-3 recipe_epochs=1
        recipe_max_length=4096
        ;;
    *) mvlm_unknown_recipe "$RECIPE" ;;
esac

# ---- what a user tunes (environment overrides; flags override these in turn) ----
MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-$recipe_llm}"
VISION_TOWER="${VISION_TOWER:-$recipe_tower}"
PROMPT_VERSION="${PROMPT_VERSION:-$recipe_version}"
DATA_PATH="${DATA_PATH:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/$recipe_name-pretrain}"
MM_PROJECTOR_TYPE="${MM_PROJECTOR_TYPE:-mlp2x_gelu}"
MM_VISION_SELECT_LAYER="${MM_VISION_SELECT_LAYER:--2}"
IMAGE_ASPECT_RATIO="${IMAGE_ASPECT_RATIO:-square}"  # stage 1 of all three resizes/crops; no padding
GLOBAL_BATCH="${GLOBAL_BATCH:-$recipe_global_batch}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-$recipe_per_device_batch}"
LEARNING_RATE="${LEARNING_RATE:-$recipe_lr}"
NUM_TRAIN_EPOCHS="${NUM_TRAIN_EPOCHS:-$recipe_epochs}"
MODEL_MAX_LENGTH="${MODEL_MAX_LENGTH:-$recipe_max_length}"
WEIGHT_DECAY="${WEIGHT_DECAY:-0.}"
WARMUP_RATIO="${WARMUP_RATIO:-0.03}"  # a --warmup_ratio or --warmup_steps flag replaces it
LR_SCHEDULER_TYPE="${LR_SCHEDULER_TYPE:-cosine}"
GRADIENT_CHECKPOINTING="${GRADIENT_CHECKPOINTING:-True}"
SAVE_STEPS="${SAVE_STEPS:-24000}"
SAVE_TOTAL_LIMIT="${SAVE_TOTAL_LIMIT:-1}"
NUM_WORKERS="${NUM_WORKERS:-4}"
REPORT_TO="${REPORT_TO:-none}"
DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-$MVLM_SCRIPTS_DIR/zero2.json}"

mvlm_train_stage --tune_mm_mlp_adapter True -- "$@"
