#!/usr/bin/env bash
# SEED-Bench (LLaVA's scripts/v1_5/eval/seed.sh): one chunk per GPU of CUDA_VISIBLE_DEVICES, then the
# score (the scorer takes the chunk files directly and does LLaVA's merge and
# convert_seed_for_submission.py accuracies; SEED-IMG is "image accuracy"). Files: playground/data/eval/README.md.
# Usage: CUDA_VISIBLE_DEVICES=0,1 MODEL_PATH=./checkpoints/my-model bash scripts/eval/seed.sh [extra runner flags]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
DIR=./playground/data/eval/seed_bench

gpu_list="${CUDA_VISIBLE_DEVICES:-0}"
IFS=',' read -ra GPULIST <<< "$gpu_list"
CHUNKS=${#GPULIST[@]}
ANSWERS=()
PIDS=()
for IDX in $(seq 0 $((CHUNKS-1))); do
    ANSWERS+=("$DIR/answers/$CKPT/${CHUNKS}_${IDX}.jsonl")
    CUDA_VISIBLE_DEVICES=${GPULIST[$IDX]} $PYTHON -m mvlm.eval.model_vqa \
        --model-path "$MODEL_PATH" \
        --question-file $DIR/llava-seed-bench.jsonl \
        --image-folder $DIR \
        --answers-file "${ANSWERS[$IDX]}" \
        --num-chunks $CHUNKS \
        --chunk-idx $IDX \
        --temperature 0 \
        "$@" &
    PIDS+=($!)
done
for PID in "${PIDS[@]}"; do wait "$PID"; done  # stops here if a chunk failed

$PYTHON -m mvlm.eval.score seed \
    --answers "${ANSWERS[@]}" \
    --question-file $DIR/SEED-Bench.json \
    --json $DIR/answers/$CKPT/scores.json
