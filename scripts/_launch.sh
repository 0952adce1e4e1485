# Sourced (not run) by scripts/pretrain.sh and scripts/finetune*.sh: the one place that decides how a
# training command is launched, so that the four scripts only hold their recipes.
#
#   GPUs found (nvidia-smi) and deepspeed importable -> deepspeed --num_gpus NPROC ... --deepspeed zeroN.json
#   else NPROC > 1                                   -> torchrun --standalone --nproc_per_node NPROC
#   else                                             -> $PYTHON -m mvlm.train.train
#
# On a machine without a GPU the command gets --use_cpu True and no --bf16 / --tf32 / --deepspeed
# (bf16 is very slow on CPUs, tf32 is CUDA-only). The user's own arguments always come last, and the
# last occurrence of a flag wins (argparse), so any flag the script sets can be overridden.
#
# Environment: PYTHON (default: python3, i.e. the activated venv's), LAUNCHER (auto | deepspeed |
# torchrun | python), NPROC (processes; default: the number of GPUs, or 1), MASTER_PORT, BF16, TF32
# (True/False, GPU only), DRY_RUN=1 (print the command and stop).

MVLM_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MVLM_RECIPES="mipha3b (default), llava15, phi3mini"

mvlm_die() {
    echo "mvlm: $*" >&2
    exit 2
}

# The script the user ran (finetune_lora.sh runs finetune.sh; messages name the one the user typed).
MVLM_SCRIPT="${MVLM_SCRIPT:-$(basename "$0")}"

mvlm_unknown_recipe() {
    mvlm_die "unknown RECIPE='$1' for $MVLM_SCRIPT; choose one of: $MVLM_RECIPES (e.g. RECIPE=llava15 bash scripts/$MVLM_SCRIPT ...)"
}

# The last value given on the command line to the flag $1 ("--name value" or "--name=value"), else $2.
mvlm_flag_value() {
    local flag="--$1" value="$2"
    shift 2
    while [ $# -gt 0 ]; do
        case "$1" in
            "$flag") [ $# -ge 2 ] && value="$2" ;;
            "$flag="*) value="${1#*=}" ;;
        esac
        shift
    done
    printf '%s\n' "$value"
}

mvlm_has_flag() {
    local flag="--$1"
    shift
    local arg
    for arg in "$@"; do
        case "$arg" in "$flag" | "$flag="*) return 0 ;; esac
    done
    return 1
}

# GPUs this process may use: those nvidia-smi lists, narrowed by CUDA_VISIBLE_DEVICES when it is set.
mvlm_count_gpus() {
    command -v nvidia-smi >/dev/null 2>&1 || { echo 0; return; }
    local listed
    listed="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
    if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
        local visible="${CUDA_VISIBLE_DEVICES//[[:space:]]/}"
        if [ -z "$visible" ] || [ "${visible:0:2}" = "-1" ]; then
            echo 0
            return
        fi
        local count
        count="$(printf '%s' "$visible" | tr ',' '\n' | grep -c .)"
        [ "$count" -lt "$listed" ] && listed="$count"
    fi
    echo "${listed:-0}"
}

mvlm_python_has() {
    "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null
}

# Decide the launcher and the number of processes; sets MVLM_GPUS, MVLM_LAUNCHER, NPROC.
mvlm_choose_launcher() {
    PYTHON="${PYTHON:-python3}"
    command -v "$PYTHON" >/dev/null 2>&1 || mvlm_die "no Python interpreter '$PYTHON'; set PYTHON=/path/to/python or activate the venv"
    mvlm_python_has mvlm || mvlm_die "$PYTHON cannot import mvlm; activate the venv (. .venv/bin/activate), run 'pip install -e .', or set PYTHON=/path/to/venv/bin/python"
    MVLM_GPUS="$(mvlm_count_gpus)"
    if [ "$MVLM_GPUS" -gt 0 ]; then
        NPROC="${NPROC:-$MVLM_GPUS}"
    else
        NPROC="${NPROC:-1}"
    fi
    case "$NPROC" in '' | *[!0-9]* | 0) mvlm_die "NPROC must be a positive integer, got '$NPROC'" ;; esac
    MVLM_LAUNCHER="${LAUNCHER:-auto}"
    case "$MVLM_LAUNCHER" in
        auto)
            if [ "$MVLM_GPUS" -gt 0 ] && mvlm_python_has deepspeed; then
                MVLM_LAUNCHER=deepspeed
            else
                if [ "$MVLM_GPUS" -gt 0 ]; then
                    echo "mvlm: GPUs found but deepspeed is not installed (pip install -e '.[train]'); training without ZeRO" >&2
                fi
                if [ "$NPROC" -gt 1 ]; then MVLM_LAUNCHER=torchrun; else MVLM_LAUNCHER=python; fi
            fi
            ;;
        deepspeed | torchrun) ;;
        python) [ "$NPROC" -eq 1 ] || mvlm_die "LAUNCHER=python runs one process, but NPROC=$NPROC; use LAUNCHER=torchrun" ;;
        *) mvlm_die "LAUNCHER must be auto, deepspeed, torchrun or python, got '$MVLM_LAUNCHER'" ;;
    esac
}

# The batch flags that keep GLOBAL_BATCH on any hardware: gradient_accumulation_steps = GLOBAL_BATCH /
# (per-device batch x NPROC), the per-device batch being --per_device_train_batch_size when the user
# passes it, else PER_DEVICE_BATCH. A user's own --gradient_accumulation_steps wins. Sets MVLM_BATCH_FLAGS.
mvlm_batch_flags() {
    PER_DEVICE_BATCH="$(mvlm_flag_value per_device_train_batch_size "$PER_DEVICE_BATCH" "$@")"
    MVLM_BATCH_FLAGS=(--per_device_train_batch_size "$PER_DEVICE_BATCH")
    mvlm_has_flag gradient_accumulation_steps "$@" && return 0
    local number
    for number in "$GLOBAL_BATCH" "$PER_DEVICE_BATCH"; do
        case "$number" in '' | *[!0-9]* | 0) mvlm_die "GLOBAL_BATCH and the per-device batch must be positive integers, got '$number'" ;; esac
    done
    local per_step=$((PER_DEVICE_BATCH * NPROC))
    if [ "$GLOBAL_BATCH" -lt "$per_step" ] || [ $((GLOBAL_BATCH % per_step)) -ne 0 ]; then
        mvlm_die "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of the per-device batch $PER_DEVICE_BATCH x NPROC=$NPROC; change GLOBAL_BATCH, PER_DEVICE_BATCH (or --per_device_train_batch_size) or NPROC, or pass --gradient_accumulation_steps yourself"
    fi
    MVLM_BATCH_FLAGS+=(--gradient_accumulation_steps $((GLOBAL_BATCH / per_step)))
}

# The script's warm-up, WARMUP_RATIO, unless the user passes --warmup_ratio or --warmup_steps: the trainer
# refuses both together, so "the last flag wins" needs the script's own left out. Sets MVLM_WARMUP_FLAGS.
mvlm_warmup_flags() {
    MVLM_WARMUP_FLAGS=(--warmup_steps "$WARMUP_RATIO")  # transformers 5: --warmup_steps below 1 is a ratio
    if mvlm_has_flag warmup_ratio "$@" || mvlm_has_flag warmup_steps "$@"; then
        MVLM_WARMUP_FLAGS=()
    fi
}

# Run `python -m mvlm.train.train ARGS...` with the chosen launcher. $1: the DeepSpeed config to use
# when launching with deepspeed; the rest: the script's flags followed by the user's.
mvlm_launch() {
    local deepspeed_config="$1"
    shift
    local device_flags=()
    if [ "$MVLM_GPUS" -gt 0 ]; then
        device_flags+=(--bf16 "${BF16:-True}" --tf32 "${TF32:-True}")
    else
        device_flags+=(--use_cpu True)
    fi
    local command=()
    case "$MVLM_LAUNCHER" in
        deepspeed)
            if [ "$MVLM_GPUS" -gt 0 ]; then
                command=("$PYTHON" -m deepspeed.launcher.runner --num_gpus "$NPROC" --master_port "${MASTER_PORT:-29500}" --module)
            else  # DeepSpeed on CPU (gloo): its launcher wants accelerators, so torchrun starts the processes
                command=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m)
            fi
            command+=(mvlm.train.train --deepspeed "$deepspeed_config")
            ;;
        torchrun) command=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m mvlm.train.train) ;;
        python) command=("$PYTHON" -m mvlm.train.train) ;;
    esac
    command+=("${device_flags[@]}" "$@")
    if [ "${DRY_RUN:-0}" = 1 ]; then  # print the command, one shell-quoted line, and stop
        printf '%q ' "${command[@]}"
        echo
        exit 0
    fi
    echo "mvlm: $(printf '%q ' "${command[@]}")" >&2
    exec "${command[@]}"
}

# Launch one training stage: choose the launcher, keep GLOBAL_BATCH, and run mvlm.train.train with the
# flags pretrain.sh and finetune.sh share, built from their variables (MODEL_NAME_OR_PATH ... REPORT_TO,
# DEEPSPEED_CONFIG). Arguments: the stage's own flags, a lone `--`, then the user's arguments, which
# come last so they win.
mvlm_train_stage() {
    local stage_flags=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        stage_flags+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift  # the `--`
    mvlm_choose_launcher
    mvlm_batch_flags "$@"
    mvlm_warmup_flags "$@"
    mvlm_launch "$DEEPSPEED_CONFIG" \
        --model_name_or_path "$MODEL_NAME_OR_PATH" \
        --version "$PROMPT_VERSION" \
        --data_path "$DATA_PATH" \
        --image_folder "$IMAGE_FOLDER" \
        --vision_tower "$VISION_TOWER" \
        "${stage_flags[@]}" \
        --mm_projector_type "$MM_PROJECTOR_TYPE" \
        --mm_vision_select_layer "$MM_VISION_SELECT_LAYER" \
        --mm_use_im_start_end False \
        --mm_use_im_patch_token False \
        --image_aspect_ratio "$IMAGE_ASPECT_RATIO" \
        --output_dir "$OUTPUT_DIR" \
        --num_train_epochs "$NUM_TRAIN_EPOCHS" \
        "${MVLM_BATCH_FLAGS[@]}" \
        --save_strategy steps \
        --save_steps "$SAVE_STEPS" \
        --save_total_limit "$SAVE_TOTAL_LIMIT" \
        --learning_rate "$LEARNING_RATE" \
        --weight_decay "$WEIGHT_DECAY" \
        "${MVLM_WARMUP_FLAGS[@]}" \
        --lr_scheduler_type "$LR_SCHEDULER_TYPE" \
        --logging_steps 1 \
        --model_max_length "$MODEL_MAX_LENGTH" \
        --gradient_checkpointing "$GRADIENT_CHECKPOINTING" \
        --dataloader_num_workers "$NUM_WORKERS" \
        --lazy_preprocess True \
        --report_to "$REPORT_TO" \
        "$@"
}
