#!/usr/bin/env bash
# MME (LLaVA's scripts/v1_5/eval/mme.sh): answer, then score; the scorer does the work of LLaVA's
# convert_answer_to_mme.py and MME's eval_tool/calculation.py. Files: playground/data/eval/README.md.
# Usage: MODEL_PATH=./checkpoints/my-model bash scripts/eval/mme.sh [extra runner flags]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
DIR=./playground/data/eval/MME

$PYTHON -m mvlm.eval.model_vqa \
    --model-path "$MODEL_PATH" \
    --question-file $DIR/llava_mme.jsonl \
    --image-folder $DIR/MME_Benchmark_release_version \
    --answers-file $DIR/answers/$CKPT.jsonl \
    --temperature 0 \
    "$@"

$PYTHON -m mvlm.eval.score mme \
    --answers $DIR/answers/$CKPT.jsonl \
    --question-file $DIR/llava_mme.jsonl \
    --gt-dir $DIR/MME_Benchmark_release_version \
    --json $DIR/answers/$CKPT.scores.json
