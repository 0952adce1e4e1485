#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO_ROOT"

# A second, small environment with transformers 4.x: tests/test_convert.py checks there that HF exports
# load in the transformers most deployments still run (5.9 changed the vision key layout 4.x reads).
T4="$REPO_ROOT/.venv-transformers4"
T4_WANT="torch==${MVLM_TORCH_VERSION:-2.13.0} transformers==4.57.*"
if [ -z "${MVLM_TRANSFORMERS4_PYTHON:-}" ]; then
    if [ ! -f "$T4/.mvlm-installed" ] || [ "$(cat "$T4/.mvlm-installed")" != "$T4_WANT" ]; then
        echo "[mvlm] setting up $T4 (transformers 4.x, for the export check)"
        python3 -m venv "$T4"
        # shellcheck disable=SC2086
        "$T4/bin/python" -m pip install --quiet --disable-pip-version-check $T4_WANT safetensors pillow
        echo "$T4_WANT" > "$T4/.mvlm-installed"
    fi
    export MVLM_TRANSFORMERS4_PYTHON="$T4/bin/python"
fi

# The browser test (tests/test_gradio_web.py) drives Debian's Chromium through its chromedriver; install both
# once when missing (as root, with apt-get), else say the test will be skipped.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[mvlm] installing chromium and chromium-driver (apt-get), for the browser test"
        APT_LOG="$(mktemp)"
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; } \
                >"$APT_LOG" 2>&1; then
            tail -n 20 "$APT_LOG"
            echo "[mvlm] apt-get could not install chromium and chromium-driver: the browser tests will be skipped"
        fi
        rm -f "$APT_LOG"
    else
        echo "[mvlm] /usr/bin/chromium or /usr/bin/chromedriver is missing (installing needs root and apt-get): the browser tests will be skipped"
    fi
fi
source "$REPO_ROOT/scripts/llama_cpp_env.sh"  # llama.cpp for tests/test_to_gguf.py (built from source once)
exec "$PYTHON" -m pytest tests "$@"
