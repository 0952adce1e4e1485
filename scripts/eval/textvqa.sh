#!/usr/bin/env bash
# TextVQA (LLaVA's scripts/v1_5/eval/textvqa.sh): answer, then score. Files: playground/data/eval/README.md.
# Usage: MODEL_PATH=./checkpoints/my-model bash scripts/eval/textvqa.sh [extra runner flags]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
DIR=./playground/data/eval/textvqa

$PYTHON -m mvlm.eval.model_vqa \
    --model-path "$MODEL_PATH" \
    --question-file $DIR/llava_textvqa_val_v051_ocr.jsonl \
    --image-folder $DIR/train_images \
    --answers-file $DIR/answers/$CKPT.jsonl \
    --temperature 0 \
    "$@"

$PYTHON -m mvlm.eval.score textvqa \
    --answers $DIR/answers/$CKPT.jsonl \
    --annotation-file $DIR/TextVQA_0.5.1_val.json \
    --json $DIR/answers/$CKPT.scores.json
