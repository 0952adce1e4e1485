#!/usr/bin/env bash
# GQA test-dev balanced (LLaVA's scripts/v1_5/eval/gqa.sh): one chunk per GPU of CUDA_VISIBLE_DEVICES,
# then the score (the scorer takes the chunk files directly and does LLaVA's merge,
# convert_gqa_for_eval.py and GQA's eval.py accuracy). Files: playground/data/eval/README.md.
# Usage: CUDA_VISIBLE_DEVICES=0,1 MODEL_PATH=./checkpoints/my-model bash scripts/eval/gqa.sh [extra runner flags]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_chunks.sh"
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
SPLIT=${SPLIT:-llava_gqa_testdev_balanced}
DIR=./playground/data/eval/gqa
GQADIR=$DIR/data

run_chunks "$DIR/answers/$SPLIT/$CKPT" "$DIR/$SPLIT.jsonl" "$GQADIR/images" "$@"  # stops here if a chunk failed

$PYTHON -m mvlm.eval.score gqa \
    --answers "${ANSWERS[@]}" \
    --questions $GQADIR/testdev_balanced_questions.json \
    --json $DIR/answers/$SPLIT/$CKPT/scores.json
