#!/usr/bin/env bash
# VQAv2 test-dev (LLaVA's scripts/v1_5/eval/vqav2.sh): one chunk per GPU of CUDA_VISIBLE_DEVICES, then
# the EvalAI upload file (the scorer takes the chunk files directly and does LLaVA's merge and
# convert_vqav2_for_submission.py). Files: playground/data/eval/README.md.
# Usage: CUDA_VISIBLE_DEVICES=0,1 MODEL_PATH=./checkpoints/my-model bash scripts/eval/vqav2.sh [extra runner flags]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_chunks.sh"
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
SPLIT=${SPLIT:-llava_vqav2_mscoco_test-dev2015}
DIR=./playground/data/eval/vqav2

run_chunks "$DIR/answers/$SPLIT/$CKPT" "$DIR/$SPLIT.jsonl" "$DIR/test2015" "$@"  # stops here if a chunk failed

$PYTHON -m mvlm.eval.score vqav2 \
    --answers "${ANSWERS[@]}" \
    --question-file $DIR/llava_vqav2_mscoco_test2015.jsonl \
    --upload $DIR/answers_upload/$SPLIT/$CKPT.json
