#!/usr/bin/env bash
# MMBench (LLaVA's scripts/v1_5/eval/mmbench.sh): answer, score (dev split: circular accuracy with
# exact-match option extraction) and write the submission file (LLaVA's convert_mmbench_for_submission.py).
# Files: playground/data/eval/README.md. For the test split: SPLIT=mmbench_test_en_20231003.
# Usage: MODEL_PATH=./checkpoints/my-model bash scripts/eval/mmbench.sh [extra runner flags, e.g. --all-rounds]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./checkpoints/llava-v1.5-7b}
CKPT=${CKPT:-$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python}
SPLIT=${SPLIT:-mmbench_dev_20230712}
DIR=./playground/data/eval/mmbench
# The server takes .xlsx, which needs openpyxl; without it the upload is written as .tsv.
UPLOAD_EXT=$($PYTHON -c "import openpyxl" 2>/dev/null && echo xlsx || echo tsv)

$PYTHON -m mvlm.eval.model_vqa_mmbench \
    --model-path "$MODEL_PATH" \
    --question-file $DIR/$SPLIT.tsv \
    --answers-file $DIR/answers/$SPLIT/$CKPT.jsonl \
    --single-pred-prompt \
    --temperature 0 \
    "$@"

$PYTHON -m mvlm.eval.score mmbench \
    --answers $DIR/answers/$SPLIT/$CKPT.jsonl \
    --question-file $DIR/$SPLIT.tsv \
    --upload $DIR/answers_upload/$SPLIT/$CKPT.$UPLOAD_EXT \
    --json $DIR/answers/$SPLIT/$CKPT.scores.json
