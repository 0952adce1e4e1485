#!/usr/bin/env bash
# Create .venv on first use (or when setup.py or the extras changed) with the CPU build of torch and
# mvlm[dev,train,serve] (train: DeepSpeed, which tests/test_distributed.py runs on the CPU; serve: the
# OpenAI-compatible server and the Gradio UI, which the tests run).
# Sourced by scripts/test.sh and scripts/demo.sh; needs only python3.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.mvlm-installed"
EXTRAS="dev,train,serve"
WANT="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$REPO_ROOT/setup.py") $EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[mvlm] setting up $VENV (first use, or setup.py or the extras changed)"
    python3 -m venv "$VENV"
    # The CPU wheel of torch lies on this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==${MVLM_TORCH_VERSION:-2.13.0}"
    # DS_BUILD_OPS=0: DeepSpeed compiles none of its ops at install time (most are CUDA-only); it builds
    # the one a CPU run needs on first use and caches it in $TORCH_EXTENSIONS_DIR (the tests use
    # .venv/torch_extensions). Its setup.py imports torch only to pre-compile ops, so pip's isolated
    # build needs no torch.
    DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$REPO_ROOT[$EXTRAS]"
    echo "$WANT" > "$STAMP"
fi
PYTHON="$VENV/bin/python"
export PYTHON
