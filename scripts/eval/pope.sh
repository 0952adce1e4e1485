#!/usr/bin/env bash
# POPE (LLaVA's scripts/v1_5/eval/pope.sh): answer, then score. Files: playground/data/eval/README.md.
# Usage: MODEL_PATH=./checkpoints/my-model bash scripts/eval/pope.sh [extra runner flags, e.g. --batch-size 8]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
DIR=./playground/data/eval/pope

$PYTHON -m mvlm.eval.model_vqa \
    --model-path "$MODEL_PATH" \
    --question-file $DIR/llava_pope_test.jsonl \
    --image-folder $DIR/val2014 \
    --answers-file $DIR/answers/$CKPT.jsonl \
    --temperature 0 \
    "$@"

$PYTHON -m mvlm.eval.score pope \
    --answers $DIR/answers/$CKPT.jsonl \
    --question-file $DIR/llava_pope_test.jsonl \
    --annotation-dir $DIR/coco \
    --json $DIR/answers/$CKPT.scores.json
