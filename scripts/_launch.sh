# Sourced (not run) by scripts/pretrain.sh and scripts/finetune*.sh: the one place that decides how a
# training command is launched, so that the four scripts only hold their recipes.
#
#   GPUs found (nvidia-smi) and deepspeed importable -> deepspeed --num_gpus NPROC ... --deepspeed zeroN.json
#   else NPROC > 1                                   -> torchrun --standalone --nproc_per_node NPROC
#   else                                             -> $PYTHON -m mvlm.train.train
#
# Many machines, two ways. HOSTFILE: DeepSpeed's launcher, run on one machine, starts every host the file
# lists ("HOST slots=GPUS" lines) over ssh (deepspeed --hostfile HOSTFILE [--master_addr MASTER_ADDR]).
# NNODES > 1: the same command on every machine, each with its NODE_RANK, meeting at MASTER_ADDR:MASTER_PORT
# (torchrun --nnodes --node_rank --master_addr --master_port, with --deepspeed zeroN.json where it applies).
#
# On a machine without a GPU the command gets --use_cpu True and no --bf16 / --tf32 / --deepspeed
# (bf16 is very slow on CPUs, tf32 is CUDA-only). The user's own arguments always come last, and the
# last occurrence of a flag wins (argparse), so any flag the script sets can be overridden.
#
# Environment: PYTHON (default: python3, i.e. the activated venv's), LAUNCHER (auto | deepspeed |
# torchrun | python), NPROC (processes per machine; default: the number of GPUs, or 1; with HOSTFILE:
# each host's slots), HOSTFILE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (default 29500), BF16, TF32
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

mvlm_positive_integer() {  # $1: the variable's name, $2: its value (a leading 0 would be octal to bash)
    case "$2" in '' | *[!0-9]* | 0*) mvlm_die "$1 must be a positive integer, got '$2'" ;; esac
}

# Decide the launcher and the number of processes; sets MVLM_GPUS, MVLM_LAUNCHER, NPROC, MVLM_NPROC_GIVEN
# (NPROC as the user set it, or empty), and through mvlm_check_machines MVLM_NODES and MVLM_WORLD.
mvlm_choose_launcher() {
    PYTHON="${PYTHON:-python3}"
    command -v "$PYTHON" >/dev/null 2>&1 || mvlm_die "no Python interpreter '$PYTHON'; set PYTHON=/path/to/python or activate the venv"
    mvlm_python_has mvlm || mvlm_die "$PYTHON cannot import mvlm; activate the venv (. .venv/bin/activate), run 'pip install -e .', or set PYTHON=/path/to/venv/bin/python"
    MVLM_GPUS="$(mvlm_count_gpus)"
    MVLM_NPROC_GIVEN="${NPROC:-}"
    if [ "$MVLM_GPUS" -gt 0 ]; then
        NPROC="${NPROC:-$MVLM_GPUS}"
    else
        NPROC="${NPROC:-1}"
    fi
    mvlm_positive_integer NPROC "$NPROC"
    mvlm_check_machines
    MVLM_LAUNCHER="${LAUNCHER:-auto}"
    case "$MVLM_LAUNCHER" in
        auto)
            if [ "$MVLM_GPUS" -gt 0 ] && mvlm_python_has deepspeed; then
                MVLM_LAUNCHER=deepspeed
            else
                if [ -n "${HOSTFILE:-}" ]; then mvlm_hostfile_needs_deepspeed; fi
                if [ "$MVLM_GPUS" -gt 0 ]; then
                    echo "mvlm: GPUs found but deepspeed is not installed (pip install -e '.[train]'); training without ZeRO" >&2
                fi
                MVLM_LAUNCHER=python
                if [ "$NPROC" -gt 1 ] || [ "$MVLM_NODES" -gt 1 ]; then MVLM_LAUNCHER=torchrun; fi
            fi
            ;;
        deepspeed | torchrun) ;;
        python)
            if [ "$NPROC" -gt 1 ] || [ "$MVLM_NODES" -gt 1 ]; then
                mvlm_die "LAUNCHER=python runs one process on one machine, but $MVLM_WORLD_TEXT; use LAUNCHER=torchrun"
            fi
            ;;
        *) mvlm_die "LAUNCHER must be auto, deepspeed, torchrun or python, got '$MVLM_LAUNCHER'" ;;
    esac
    if [ -n "${HOSTFILE:-}" ] && { [ "$MVLM_LAUNCHER" != deepspeed ] || [ "$MVLM_GPUS" -eq 0 ]; }; then
        mvlm_hostfile_needs_deepspeed
    fi
}

mvlm_hostfile_needs_deepspeed() {
    mvlm_die "HOSTFILE is read by DeepSpeed's launcher, which needs GPUs on this machine and deepspeed" \
        "(LAUNCHER=auto or deepspeed); otherwise use NNODES, NODE_RANK and MASTER_ADDR (torchrun on each machine)"
}

# Many machines, HOSTFILE's way or NNODES's, checked before anything starts: a wrong value on one machine
# otherwise shows up as every machine waiting for the others. Sets MVLM_NODES (the machines torchrun
# joins: 1 with a hostfile, whose launcher does the joining), MVLM_WORLD (processes in all, for the global
# batch) and MVLM_WORLD_TEXT (how they were counted, for messages).
mvlm_check_machines() {
    if [ -n "${MASTER_PORT:-}" ]; then mvlm_positive_integer MASTER_PORT "$MASTER_PORT"; fi
    MVLM_NODES=1
    MVLM_WORLD="$NPROC" MVLM_WORLD_TEXT="NPROC=$NPROC"
    if [ -n "${HOSTFILE:-}" ]; then
        [ -z "${NNODES:-}" ] || mvlm_die "give HOSTFILE (DeepSpeed's launcher starts every machine from this one)" \
            "or NNODES (torchrun on each machine), not both"
        mvlm_read_hostfile
        if [ -n "$MVLM_NPROC_GIVEN" ]; then  # DeepSpeed's --num_gpus: that many on every host, whatever its slots
            MVLM_WORLD=$((NPROC * MVLM_HOSTS)) MVLM_WORLD_TEXT="NPROC=$NPROC x the $MVLM_HOSTS hosts of HOSTFILE"
        else
            MVLM_WORLD="$MVLM_SLOTS" MVLM_WORLD_TEXT="the $MVLM_SLOTS slots of HOSTFILE"
        fi
    elif [ -n "${NNODES:-}" ]; then
        mvlm_positive_integer NNODES "$NNODES"
        MVLM_NODES="$NNODES"
        [ "$NNODES" -gt 1 ] || return 0
        mvlm_check_node_rank
        MVLM_WORLD=$((NPROC * NNODES)) MVLM_WORLD_TEXT="NPROC=$NPROC x NNODES=$NNODES"
    fi
}

# NODE_RANK and MASTER_ADDR for NNODES > 1: no defaults, since two machines that both think they are
# node 0, or that look for each other at different addresses, wait forever.
mvlm_check_node_rank() {
    local last=$((NNODES - 1))
    [ -n "${NODE_RANK:-}" ] || mvlm_die "NNODES=$NNODES needs NODE_RANK, this machine's number:" \
        "0 on the MASTER_ADDR machine, 1 ... $last on the others"
    case "$NODE_RANK" in
        *[!0-9]* | 0?*) mvlm_die "NODE_RANK must be 0 ... $last (NNODES=$NNODES), got '$NODE_RANK'" ;;
    esac
    [ "$NODE_RANK" -le "$last" ] || mvlm_die "NODE_RANK must be 0 ... $last (NNODES=$NNODES), got '$NODE_RANK'"
    [ -n "${MASTER_ADDR:-}" ] || mvlm_die "NNODES=$NNODES needs MASTER_ADDR," \
        "the address of the NODE_RANK=0 machine that the others reach"
}

# Count HOSTFILE's hosts and slots, reading it as DeepSpeed does ("HOST slots=N" lines, # comments, blank
# lines); sets MVLM_HOSTS and MVLM_SLOTS.
mvlm_read_hostfile() {
    local format="it lists the machines, one 'HOST slots=GPUS' line each"
    [ -f "$HOSTFILE" ] || mvlm_die "HOSTFILE=$HOSTFILE is not a file; $format"
    MVLM_HOSTS=0 MVLM_SLOTS=0
    local line number=0
    while IFS= read -r line || [ -n "$line" ]; do
        number=$((number + 1))
        line="${line#"${line%%[![:space:]]*}"}"  # without its leading blanks
        case "$line" in '' | '#'*) continue ;; esac
        if ! [[ "$line" =~ ^[^[:space:]]+[[:space:]]+slots=([0-9]+) ]]; then
            mvlm_die "HOSTFILE=$HOSTFILE line $number is not 'HOST slots=GPUS': $line"
        fi
        MVLM_HOSTS=$((MVLM_HOSTS + 1)) MVLM_SLOTS=$((MVLM_SLOTS + 10#${BASH_REMATCH[1]}))
    done <"$HOSTFILE"
    [ "$MVLM_SLOTS" -gt 0 ] || mvlm_die "HOSTFILE=$HOSTFILE lists no slots; $format"
}

# The batch flags that keep GLOBAL_BATCH on any hardware: gradient_accumulation_steps = GLOBAL_BATCH /
# (per-device batch x processes in all: NPROC x NNODES, or HOSTFILE's slots), the per-device batch being
# --per_device_train_batch_size when the user passes it, else PER_DEVICE_BATCH. A user's own
# --gradient_accumulation_steps wins. Sets MVLM_BATCH_FLAGS.
mvlm_batch_flags() {
    PER_DEVICE_BATCH="$(mvlm_flag_value per_device_train_batch_size "$PER_DEVICE_BATCH" "$@")"
    MVLM_BATCH_FLAGS=(--per_device_train_batch_size "$PER_DEVICE_BATCH")
    mvlm_has_flag gradient_accumulation_steps "$@" && return 0
    local number
    for number in "$GLOBAL_BATCH" "$PER_DEVICE_BATCH"; do
        case "$number" in '' | *[!0-9]* | 0) mvlm_die "GLOBAL_BATCH and the per-device batch must be positive integers, got '$number'" ;; esac
    done
    local per_step=$((PER_DEVICE_BATCH * MVLM_WORLD))
    if [ "$GLOBAL_BATCH" -lt "$per_step" ] || [ $((GLOBAL_BATCH % per_step)) -ne 0 ]; then
        mvlm_die "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of the per-device batch $PER_DEVICE_BATCH x" \
            "$MVLM_WORLD_TEXT; change GLOBAL_BATCH, PER_DEVICE_BATCH (or --per_device_train_batch_size) or the" \
            "number of processes, or pass --gradient_accumulation_steps yourself"
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

# What starts the training processes, up to the module `-m` runs; sets MVLM_START.
mvlm_start_command() {
    local port="${MASTER_PORT:-29500}"
    if [ -n "${HOSTFILE:-}" ]; then  # DeepSpeed's launcher starts every host over ssh
        MVLM_START=("$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE")
        # Without MASTER_ADDR DeepSpeed asks the first host for its address (ssh HOST hostname -I).
        if [ -n "${MASTER_ADDR:-}" ]; then MVLM_START+=(--master_addr "$MASTER_ADDR"); fi
        if [ -n "$MVLM_NPROC_GIVEN" ]; then MVLM_START+=(--num_gpus "$NPROC"); fi
        MVLM_START+=(--master_port "$port" --module)
    elif [ "$MVLM_NODES" -gt 1 ]; then  # this machine's share; the others run the same with their NODE_RANK
        MVLM_START=("$PYTHON" -m torch.distributed.run --nnodes "$MVLM_NODES" --node_rank "$NODE_RANK"
            --master_addr "$MASTER_ADDR" --master_port "$port" --nproc_per_node "$NPROC" -m)
    elif [ "$MVLM_LAUNCHER" = deepspeed ] && [ "$MVLM_GPUS" -gt 0 ]; then
        MVLM_START=("$PYTHON" -m deepspeed.launcher.runner --num_gpus "$NPROC" --master_port "$port" --module)
    elif [ "$MVLM_LAUNCHER" = python ]; then
        MVLM_START=("$PYTHON" -m)
    else  # torchrun; also DeepSpeed on CPUs (gloo), whose own launcher wants accelerators
        MVLM_START=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m)
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
    mvlm_start_command
    local command=("${MVLM_START[@]}" mvlm.train.train)
    if [ "$MVLM_LAUNCHER" = deepspeed ]; then command+=(--deepspeed "$deepspeed_config"); fi
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
