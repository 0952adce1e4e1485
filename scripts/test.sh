#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO_ROOT"
exec "$PYTHON" -m pytest tests "$@"
