#!/usr/bin/env bash
# GQA test-dev balanced (LLaVA's scripts/v1_5/eval/gqa.sh): one chunk per GPU of CUDA_VISIBLE_DEVICES,
# then the score (the scorer takes the chunk files directly and does LLaVA's merge,
# convert_gqa_for_eval.py and GQA's eval.py accuracy). Files: playground/data/eval/README.md.
# Usage: CUDA_VISIBLE_DEVICES=0,1 MODEL_PATH=./checkpoints/my-model bash scripts/eval/gqa.sh [extra runner flags]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
SPLIT=${SPLIT:-llava_gqa_testdev_balanced}
DIR=./playground/data/eval/gqa
GQADIR=$DIR/data

gpu_list="${CUDA_VISIBLE_DEVICES:-0}"
IFS=',' read -ra GPULIST <<< "$gpu_list"
CHUNKS=${#GPULIST[@]}
ANSWERS=()
PIDS=()
for IDX in $(seq 0 $((CHUNKS-1))); do
    ANSWERS+=("$DIR/answers/$SPLIT/$CKPT/${CHUNKS}_${IDX}.jsonl")
    CUDA_VISIBLE_DEVICES=${GPULIST[$IDX]} $PYTHON -m mvlm.eval.model_vqa \
        --model-path "$MODEL_PATH" \
        --question-file $DIR/$SPLIT.jsonl \
        --image-folder $GQADIR/images \
        --answers-file "${ANSWERS[$IDX]}" \
        --num-chunks $CHUNKS \
        --chunk-idx $IDX \
        --temperature 0 \
        "$@" &
    PIDS+=($!)
done
for PID in "${PIDS[@]}"; do wait "$PID"; done  # stops here if a chunk failed

$PYTHON -m mvlm.eval.score gqa \
    --answers "${ANSWERS[@]}" \
    --questions $GQADIR/testdev_balanced_questions.json \
    --json $DIR/answers/$SPLIT/$CKPT/scores.json
