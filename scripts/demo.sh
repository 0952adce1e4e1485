#!/usr/bin/env bash
# The end-to-end demo: generate a synthetic image-question dataset under playground/data/demo, make a
# tokenizer, a tiny LM and a tiny vision tower from scratch, train them with scripts/pretrain.sh and
# scripts/finetune.sh on the CPU, evaluate on held-out questions (mvlm.eval.model_vqa + mvlm.eval.score)
# and ask one question through the chat CLI. Sets up .venv first if needed (needs only python3).
#
#   bash scripts/demo.sh                    # the full demo (see README.md for its time and accuracy)
#   bash scripts/demo.sh --quick            # a reduced run (about two minutes): the pipeline, less learning
#   bash scripts/demo.sh --output DIR --seed 1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO_ROOT"
# Idle OpenMP threads sleep instead of spinning, so the data loading, the trainer and anything else on a
# small machine do not fight over its cores.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "$PYTHON" -m mvlm.demo "$@"
