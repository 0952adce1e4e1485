#!/usr/bin/env bash
# SEED-Bench (LLaVA's scripts/v1_5/eval/seed.sh): one chunk per GPU of CUDA_VISIBLE_DEVICES, then the
# score (the scorer takes the chunk files directly and does LLaVA's merge and
# convert_seed_for_submission.py accuracies; SEED-IMG is "image accuracy"). Files: playground/data/eval/README.md.
# Usage: CUDA_VISIBLE_DEVICES=0,1 MODEL_PATH=./checkpoints/my-model bash scripts/eval/seed.sh [extra runner flags]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_chunks.sh"
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
DIR=./playground/data/eval/seed_bench

run_chunks "$DIR/answers/$CKPT" "$DIR/llava-seed-bench.jsonl" "$DIR" "$@"  # stops here if a chunk failed

$PYTHON -m mvlm.eval.score seed \
    --answers "${ANSWERS[@]}" \
    --question-file $DIR/SEED-Bench.json \
    --json $DIR/answers/$CKPT/scores.json
