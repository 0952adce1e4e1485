#!/usr/bin/env bash
# Stage 2 (visual instruction tuning): start from the LLM, the vision tower and the stage-1 projector;
# train the projector and the whole LLM (and the vision tower where the recipe does). Writes a full
# mvlm checkpoint to OUTPUT_DIR that `mvlm.model.builder.load_pretrained_model(OUTPUT_DIR)` loads.
#
#   bash scripts/finetune.sh                                   # the Mipha-3B recipe, LLaVA's data layout
#   RECIPE=llava15 bash scripts/finetune.sh                    # LLaVA-1.5-7B; or RECIPE=phi3mini
#   bash scripts/finetune.sh --model_name_or_path ./my-llm --vision_tower ./my-clip \
#       --pretrain_mm_mlp_adapter out/pretrain/mm_projector.safetensors \
#       --data_path d.json --image_folder imgs --output_dir out/finetune
#
# Every variable below can be set from the environment, and every flag of `python -m mvlm.train.train`
# can be passed: the arguments come last, so they win. PRETRAIN_MM_MLP_ADAPTER= (empty) passes none,
# e.g. when MODEL_NAME_OR_PATH is an mvlm checkpoint to continue from. GLOBAL_BATCH is kept whatever the
# hardware (see scripts/pretrain.sh); launcher, many machines, CPU/GPU flags and DRY_RUN=1: see
# scripts/_launch.sh.
# scripts/finetune_lora.sh and scripts/finetune_qlora.sh run this script with their LoRA flags.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

# ---- the recipes (seeds: 003 Mipha, 004 LLaVA-1.5, 000 XTuner LLaVA-Phi-3-mini) ----
RECIPE="${RECIPE:-mipha3b}"
case "$RECIPE" in
    mipha3b)  # Mipha-3B: Phi-2 + SigLIP-so400m/384, Mipha's phi template; 128 x 2e-5, 2 epochs, max length
        # 2048 (4/GPU x 4 accumulation x 8 GPUs); the vision tower trains too, at the same learning rate.
        recipe_name=mipha-3b
        recipe_llm=microsoft/phi-2
        recipe_tower=google/siglip-so400m-patch14-384
        recipe_version=phi
        recipe_global_batch=128 recipe_per_device_batch=4 recipe_lr=2e-5 recipe_epochs=2
        recipe_max_length=2048 recipe_train_tower=True
        ;;
    llava15)  # LLaVA-1.5-7B: Vicuna-7B-v1.5 + CLIP-L/336, v1 template; 128 x 2e-5, 1 epoch, max length 2048
        # (16/GPU on 8 GPUs); the vision tower stays frozen.
        recipe_name=llava-v1.5-7b
        recipe_llm=lmsys/vicuna-7b-v1.5
        recipe_tower=openai/clip-vit-large-patch14-336
        recipe_version=v1
        recipe_global_batch=128 recipe_per_device_batch=16 recipe_lr=2e-5 recipe_epochs=1
        recipe_max_length=2048 recipe_train_tower=False
        ;;
    phi3mini)  # XTuner LLaVA-Phi-3-mini: Phi-3-mini-4k + CLIP-L/336, phi3_chat; 128 (8/GPU x 2 accumulation
        # x 8 GPUs) x 2e-5, 2 epochs, 4096 tokens with the image; "Full LLM, Full ViT" at one learning rate.
        # XTuner trained it on ShareGPT4V-PT and InternVL-SFT: point DATA_PATH / IMAGE_FOLDER there.
        recipe_name=llava-phi-3-mini
        recipe_llm=microsoft/Phi-3-mini-4k-instruct
        recipe_tower=openai/clip-vit-large-patch14-336
        recipe_version=phi3_chat
        recipe_global_batch=128 recipe_per_device_batch=8 recipe_lr=2e-5 recipe_epochs=2
        recipe_max_length=4096 recipe_train_tower=True
        ;;
    *) mvlm_unknown_recipe "$RECIPE" ;;
esac

# ---- what a user tunes (environment overrides; flags override these in turn) ----
MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-$recipe_llm}"
VISION_TOWER="${VISION_TOWER:-$recipe_tower}"
PROMPT_VERSION="${PROMPT_VERSION:-$recipe_version}"
DATA_PATH="${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data}"
PRETRAIN_MM_MLP_ADAPTER="${PRETRAIN_MM_MLP_ADAPTER-./checkpoints/$recipe_name-pretrain/mm_projector.safetensors}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/$recipe_name${OUTPUT_SUFFIX:-}}"
MM_PROJECTOR_TYPE="${MM_PROJECTOR_TYPE:-mlp2x_gelu}"
MM_VISION_SELECT_LAYER="${MM_VISION_SELECT_LAYER:--2}"
IMAGE_ASPECT_RATIO="${IMAGE_ASPECT_RATIO:-pad}"
GROUP_BY_MODALITY_LENGTH="${GROUP_BY_MODALITY_LENGTH:-True}"
UNFREEZE_MM_VISION_TOWER="${UNFREEZE_MM_VISION_TOWER:-$recipe_train_tower}"
MM_VISION_TOWER_LR="${MM_VISION_TOWER_LR:-}"  # empty: the tower trains at LEARNING_RATE
GLOBAL_BATCH="${GLOBAL_BATCH:-$recipe_global_batch}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-$recipe_per_device_batch}"
LEARNING_RATE="${LEARNING_RATE:-$recipe_lr}"
NUM_TRAIN_EPOCHS="${NUM_TRAIN_EPOCHS:-$recipe_epochs}"
MODEL_MAX_LENGTH="${MODEL_MAX_LENGTH:-$recipe_max_length}"
WEIGHT_DECAY="${WEIGHT_DECAY:-0.}"
WARMUP_RATIO="${WARMUP_RATIO:-0.03}"  # a --warmup_ratio or --warmup_steps flag replaces it
LR_SCHEDULER_TYPE="${LR_SCHEDULER_TYPE:-cosine}"
GRADIENT_CHECKPOINTING="${GRADIENT_CHECKPOINTING:-True}"
SAVE_STEPS="${SAVE_STEPS:-50000}"
SAVE_TOTAL_LIMIT="${SAVE_TOTAL_LIMIT:-1}"
NUM_WORKERS="${NUM_WORKERS:-4}"
REPORT_TO="${REPORT_TO:-none}"
DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-$MVLM_SCRIPTS_DIR/zero3.json}"

optional_flags=()
[ -n "$PRETRAIN_MM_MLP_ADAPTER" ] && optional_flags+=(--pretrain_mm_mlp_adapter "$PRETRAIN_MM_MLP_ADAPTER")
[ -n "$MM_VISION_TOWER_LR" ] && optional_flags+=(--mm_vision_tower_lr "$MM_VISION_TOWER_LR")

mvlm_train_stage \
    "${optional_flags[@]}" \
    --unfreeze_mm_vision_tower "$UNFREEZE_MM_VISION_TOWER" \
    --group_by_modality_length "$GROUP_BY_MODALITY_LENGTH" \
    -- "$@"
