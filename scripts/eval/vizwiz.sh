#!/usr/bin/env bash
# VizWiz (LLaVA's scripts/v1_5/eval/vizwiz.sh): answer, then write the EvalAI upload file (the scorer
# does LLaVA's convert_vizwiz_for_submission.py). Files: playground/data/eval/README.md.
# Usage: MODEL_PATH=./checkpoints/my-model bash scripts/eval/vizwiz.sh [extra runner flags]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
DIR=./playground/data/eval/vizwiz

$PYTHON -m mvlm.eval.model_vqa \
    --model-path "$MODEL_PATH" \
    --question-file $DIR/llava_test.jsonl \
    --image-folder $DIR/test \
    --answers-file $DIR/answers/$CKPT.jsonl \
    --temperature 0 \
    "$@"

$PYTHON -m mvlm.eval.score vizwiz \
    --answers $DIR/answers/$CKPT.jsonl \
    --question-file $DIR/llava_test.jsonl \
    --upload $DIR/answers_upload/$CKPT.json
