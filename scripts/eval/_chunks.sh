# Sourced (not run) by the eval scripts that split a benchmark over GPUs as LLaVA does (gqa.sh, vqav2.sh,
# seed.sh): one mvlm.eval.model_vqa chunk per GPU of CUDA_VISIBLE_DEVICES (default: GPU 0), all at once.
# Uses MODEL_PATH and PYTHON from the sourcing script.

# run_chunks ANSWERS_DIR QUESTION_FILE IMAGE_FOLDER [extra runner flags...]
# Writes ANSWERS_DIR/{CHUNKS}_{IDX}.jsonl, waits for every chunk (the script stops, under set -e, when one
# failed) and sets ANSWERS to the chunk files in order, for the scorer (which merges them).
run_chunks() {
    local answers_dir=$1 question_file=$2 image_folder=$3
    shift 3
    local gpu_list="${CUDA_VISIBLE_DEVICES:-0}"
    local gpus=() pids=() idx pid
    IFS=',' read -ra gpus <<< "$gpu_list"
    local chunks=${#gpus[@]}
    ANSWERS=()
    for idx in $(seq 0 $((chunks-1))); do
        ANSWERS+=("$answers_dir/${chunks}_${idx}.jsonl")
        CUDA_VISIBLE_DEVICES=${gpus[$idx]} $PYTHON -m mvlm.eval.model_vqa \
            --model-path "$MODEL_PATH" \
            --question-file "$question_file" \
            --image-folder "$image_folder" \
            --answers-file "${ANSWERS[$idx]}" \
            --num-chunks $chunks \
            --chunk-idx $idx \
            --temperature 0 \
            "$@" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
}
