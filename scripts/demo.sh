#!/usr/bin/env bash
# The end-to-end demo: train a tiny LLaVA-style model from scratch on a synthetic task on the CPU,
# then show that it learned. Not built yet: the training loop and the evaluation it needs come first.
set -euo pipefail
echo "mvlm demo: will generate a synthetic image-question dataset under playground/, run stage-1 and"
echo "stage-2 training of a tiny model on the CPU, and compare its answers before and after training."
echo "Not available yet: it needs the training (issue 3) and evaluation (issue 4) work. Run 'bash scripts/test.sh'."
exit 2
