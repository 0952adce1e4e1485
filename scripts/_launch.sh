# Sourced (not run) by scripts/pretrain.sh and scripts/finetune*.sh: the one place that decides how a
# training command is launched. The recipes (models, data, template, global batch, learning rates, epochs,
# DeepSpeed config) live in Python, mvlm/train/recipes.py; this file chooses the launcher and the devices,
# counts the processes, and asks `python -m mvlm.train.launch_plan` for the recipe's flags on them.
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
# (bf16 is very slow on CPUs, tf32 is CUDA-only). The command is: the launcher, mvlm.train.train, the
# DeepSpeed config (under DeepSpeed), the device flags, the recipe's flags that nothing below sets, the flags
# of the environment variables below, then the user's own arguments, last and unchanged: the last occurrence
# of a flag wins (argparse), so any flag can be overridden. The global batch is kept on any hardware: gradient_accumulation_steps =
# GLOBAL_BATCH / (per-device batch x processes in all), unless the user passes it.
#
# ---- every environment variable the scripts read (unset or empty: the default named) ----
# The launch:
#   PYTHON       the interpreter with mvlm installed (default python3, i.e. the activated venv's)
#   LAUNCHER     auto | deepspeed | torchrun | python (default auto, as above)
#   NPROC        processes per machine (default: the GPUs this process may use, or 1; with HOSTFILE: each
#                host's slots); CUDA_VISIBLE_DEVICES narrows the GPUs counted
#   HOSTFILE     DeepSpeed's hostfile: start every machine it lists from this one
#   NNODES       machines, each running the script itself with its NODE_RANK (0 ... NNODES-1)
#   NODE_RANK    this machine's number, with NNODES > 1
#   MASTER_ADDR  the address of the NODE_RANK=0 machine (NNODES > 1; optional with HOSTFILE)
#   MASTER_PORT  its port (default 29500)
#   BF16, TF32   True/False, on GPUs only (default True)
#   DRY_RUN      1: print the command, one shell-quoted line, and run nothing
#   MVLM_SCRIPT  the script named in messages (default: the one run)
# The recipe:
#   RECIPE            one of mvlm/train/recipes.py's (default mipha3b; a wrong name lists them)
#   GLOBAL_BATCH      samples per optimizer step over all processes (default: the recipe's)
#   OUTPUT_SUFFIX     stage 2: write to ./checkpoints/<model><suffix> (default: the recipe's folder)
#   DEEPSPEED_CONFIG  the DeepSpeed config on GPUs (default: the recipe's, scripts/zero2.json or zero3.json)
# and one variable per flag, MVLM_FLAG_VARIABLES below: set, it passes that flag (LEARNING_RATE=2e-3 ->
# --learning_rate 2e-3) in place of the recipe's value.

# VARIABLE, the flag of mvlm.train.train it sets, and the runs that read it: all, stage 2, or the LoRA
# scripts (finetune_lora.sh and finetune_qlora.sh; qlora: finetune_qlora.sh alone).
MVLM_FLAG_VARIABLES=(
    "MODEL_NAME_OR_PATH        model_name_or_path           all"    # the LLM, or an mvlm checkpoint to continue
    "VISION_TOWER              vision_tower                 all"
    "PROMPT_VERSION            version                      all"    # the chat template
    "DATA_PATH                 data_path                    all"
    "IMAGE_FOLDER              image_folder                 all"
    "OUTPUT_DIR                output_dir                   all"
    "MM_PROJECTOR_TYPE         mm_projector_type            all"
    "MM_VISION_SELECT_LAYER    mm_vision_select_layer       all"
    "IMAGE_ASPECT_RATIO        image_aspect_ratio           all"
    "PER_DEVICE_BATCH          per_device_train_batch_size  all"
    "LEARNING_RATE             learning_rate                all"
    "NUM_TRAIN_EPOCHS          num_train_epochs             all"
    "MODEL_MAX_LENGTH          model_max_length             all"
    "WEIGHT_DECAY              weight_decay                 all"
    "WARMUP_RATIO              warmup_steps                 all"    # below 1, a ratio; --warmup_* replace it
    "LR_SCHEDULER_TYPE         lr_scheduler_type            all"
    "GRADIENT_CHECKPOINTING    gradient_checkpointing       all"
    "SAVE_STEPS                save_steps                   all"
    "SAVE_TOTAL_LIMIT          save_total_limit             all"
    "NUM_WORKERS               dataloader_num_workers       all"
    "REPORT_TO                 report_to                    all"
    "PRETRAIN_MM_MLP_ADAPTER   pretrain_mm_mlp_adapter      2"      # set but empty: none (continue a checkpoint)
    "GROUP_BY_MODALITY_LENGTH  group_by_modality_length     2"
    "UNFREEZE_MM_VISION_TOWER  unfreeze_mm_vision_tower     2"
    "MM_VISION_TOWER_LR        mm_vision_tower_lr           2"
    "LORA_R                    lora_r                       lora"
    "LORA_ALPHA                lora_alpha                   lora"
    "LORA_DROPOUT              lora_dropout                 lora"
    "MM_PROJECTOR_LR           mm_projector_lr              lora"
    "BITS                      bits                         qlora"
    "QUANT_TYPE                quant_type                   qlora"
    "DOUBLE_QUANT              double_quant                 qlora"
)

MVLM_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The script the user ran (messages name the one the user typed).
MVLM_SCRIPT="${MVLM_SCRIPT:-$(basename "$0")}"

mvlm_die() {
    echo "mvlm: $*" >&2
    exit 2
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

# The flags of the environment variables in MVLM_FLAG_VARIABLES that this run reads. $1: the stage, $2: the
# variant (empty, lora or qlora). Sets MVLM_ENVIRONMENT_FLAGS.
mvlm_environment_flags() {
    local stage="$1" variant="$2" row variable flag runs
    MVLM_ENVIRONMENT_FLAGS=()
    for row in "${MVLM_FLAG_VARIABLES[@]}"; do
        read -r variable flag runs <<<"$row"
        case "$runs" in
            all) ;;
            2) [ "$stage" = 2 ] || continue ;;
            lora) [ -n "$variant" ] || continue ;;
            qlora) [ "$variant" = qlora ] || continue ;;
        esac
        if [ -n "${!variable:-}" ]; then
            MVLM_ENVIRONMENT_FLAGS+=("--$flag" "${!variable}")
        elif [ "$variable" = PRETRAIN_MM_MLP_ADAPTER ] && [ -n "${PRETRAIN_MM_MLP_ADAPTER+set}" ]; then
            MVLM_ENVIRONMENT_FLAGS+=("--$flag" "")  # set but empty: no stage-1 projector
        fi
    done
}

# The recipe's flags for this launch, from mvlm.train.launch_plan. $1: the stage, $2: the variant; the rest:
# the user's arguments. Sets MVLM_DEEPSPEED_CONFIG and MVLM_RECIPE_FLAGS (recipe and environment flags).
mvlm_recipe_flags() {
    local stage="$1" variant="$2"
    shift 2
    mvlm_environment_flags "$stage" "$variant"
    local request=(--script="$MVLM_SCRIPT" --recipe="${RECIPE:-}" --stage "$stage" --processes "$MVLM_WORLD"
        --processes-text="$MVLM_WORLD_TEXT")
    if [ -n "$variant" ]; then request+=(--variant "$variant"); fi
    if [ -n "${GLOBAL_BATCH:-}" ]; then request+=(--global-batch="$GLOBAL_BATCH"); fi
    if [ "$stage" = 2 ] && [ -n "${OUTPUT_SUFFIX:-}" ]; then request+=(--output-suffix="$OUTPUT_SUFFIX"); fi
    local plan
    # One shell-quoted line (Python's shlex.join): the recipe's DeepSpeed config, then the flags.
    plan="$("$PYTHON" -m mvlm.train.launch_plan "${request[@]}" -- "${MVLM_ENVIRONMENT_FLAGS[@]}" -- "$@")" || exit $?
    eval "MVLM_RECIPE_FLAGS=($plan)"
    MVLM_DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-$MVLM_SCRIPTS_DIR/${MVLM_RECIPE_FLAGS[0]}}"
    MVLM_RECIPE_FLAGS=("${MVLM_RECIPE_FLAGS[@]:1}")
}

# Run `python -m mvlm.train.train ARGS...` with the chosen launcher and this machine's device flags.
mvlm_launch() {
    local device_flags=()
    if [ "$MVLM_GPUS" -gt 0 ]; then
        device_flags+=(--bf16 "${BF16:-True}" --tf32 "${TF32:-True}")
    else
        device_flags+=(--use_cpu True)
    fi
    mvlm_start_command
    local command=("${MVLM_START[@]}" mvlm.train.train)
    if [ "$MVLM_LAUNCHER" = deepspeed ]; then command+=(--deepspeed "$MVLM_DEEPSPEED_CONFIG"); fi
    command+=("${device_flags[@]}" "$@")
    if [ "${DRY_RUN:-0}" = 1 ]; then  # print the command, one shell-quoted line, and stop
        printf '%q ' "${command[@]}"
        echo
        exit 0
    fi
    echo "mvlm: $(printf '%q ' "${command[@]}")" >&2
    exec "${command[@]}"
}

# Launch one training stage of RECIPE. $1: the stage (1 or 2), $2: the variant (empty, lora or qlora);
# the rest: the user's arguments, which come last so they win.
mvlm_train_stage() {
    local stage="$1" variant="$2"
    shift 2
    mvlm_choose_launcher
    mvlm_recipe_flags "$stage" "$variant" "$@"
    mvlm_launch "${MVLM_RECIPE_FLAGS[@]}" "$@"
}
