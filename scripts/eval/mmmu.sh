#!/usr/bin/env bash
# MMMU (validation): answer, then score with MMMU's answer parsing. LLaVA has no MMMU script; the
# question file is made as playground/data/eval/README.md describes.
# Usage: MODEL_PATH=./checkpoints/my-model bash scripts/eval/mmmu.sh [extra runner flags]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
DIR=./playground/data/eval/mmmu

$PYTHON -m mvlm.eval.model_vqa \
    --model-path "$MODEL_PATH" \
    --question-file $DIR/mmmu_validation.jsonl \
    --image-folder $DIR/images \
    --answers-file $DIR/answers/$CKPT.jsonl \
    --temperature 0 \
    "$@"

$PYTHON -m mvlm.eval.score mmmu \
    --answers $DIR/answers/$CKPT.jsonl \
    --question-file $DIR/mmmu_validation.jsonl \
    --json $DIR/answers/$CKPT.scores.json
