#!/usr/bin/env bash
# ScienceQA-IMG (LLaVA's scripts/v1_5/eval/sqa.sh): answer, then score. Files: playground/data/eval/README.md.
# Usage: MODEL_PATH=./checkpoints/my-model bash scripts/eval/sqa.sh [extra runner flags]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
DIR=./playground/data/eval/scienceqa

$PYTHON -m mvlm.eval.model_vqa_science \
    --model-path "$MODEL_PATH" \
    --question-file $DIR/llava_test_CQM-A.json \
    --image-folder $DIR/images/test \
    --answers-file $DIR/answers/$CKPT.jsonl \
    --single-pred-prompt \
    --temperature 0 \
    "$@"

$PYTHON -m mvlm.eval.score scienceqa \
    --answers $DIR/answers/$CKPT.jsonl \
    --base-dir $DIR \
    --split test \
    --json $DIR/answers/$CKPT.scores.json
