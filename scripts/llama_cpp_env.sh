#!/usr/bin/env bash
# A side environment with llama.cpp, for tests/test_to_gguf.py: it checks that the GGUF files
# `python -m mvlm.convert.to_gguf` writes answer in llama.cpp as the mvlm checkpoint does.
#
# Sourced by scripts/test.sh (or by hand: `source scripts/llama_cpp_env.sh`). On first use (or when the
# pinned version, the build flags or the CPU change) it
#   - downloads llama-cpp-python's source distribution from PyPI into .venv-llama-cpp/sdist,
#   - keeps its unpacked vendor/llama.cpp (convert_hf_to_gguf.py, gguf-py, tools/mtmd/legacy-models) as
#     .venv-llama-cpp/llama.cpp: the converter that `mvlm.convert.to_gguf --llama-cpp` runs,
#   - builds llama-cpp-python from that source distribution, CPU only (about 4 minutes on 2 idle cores),
#   - adds llama.cpp's conversion requirements (torch, transformers 4.x, numpy, PyYAML, tqdm, sentencepiece,
#     safetensors; its legacy image-encoder converter needs transformers 4.x), so the same Python runs
#     the converters (`mvlm.convert.to_gguf --converter-python`).
# Then it exports MVLM_LLAMA_CPP_PYTHON (the side environment's python: llama-cpp-python and the converters)
# and MVLM_LLAMA_CPP_DIR (the llama.cpp source tree). Both already set: nothing to do.
# Needs python3, a C/C++ compiler and cmake. The setup runs in a subshell, so a failure stops it
# without closing an interactive shell that sourced this file.
_LC_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${MVLM_LLAMA_CPP_PYTHON:-}" ] || [ -z "${MVLM_LLAMA_CPP_DIR:-}" ]; then
    _LC="$_LC_REPO_ROOT/.venv-llama-cpp"
    (
        set -euo pipefail
        VERSION="${MVLM_LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
        # CPU only; llama.cpp's own tools, examples and server are not needed (the package builds libllama,
        # ggml and libmtmd). ggml builds for this CPU (-march=native), so the stamp names the CPU's flags.
        CMAKE_FLAGS="-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF"
        CMAKE_FLAGS="$CMAKE_FLAGS -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=OFF"
        CMAKE_FLAGS="$CMAKE_FLAGS -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF"
        CPU="$( (grep -m1 '^flags' /proc/cpuinfo || uname -m) | cksum | cut -d' ' -f1)"
        WANT="llama-cpp-python==$VERSION cmake: $CMAKE_FLAGS cpu: $CPU"
        CONVERTER_WANT="torch==${MVLM_TORCH_VERSION:-2.13.0} transformers==4.57.*"
        CONVERTER_WANT="$CONVERTER_WANT numpy pyyaml tqdm sentencepiece safetensors"
        if [ -f "$_LC/.mvlm-installed" ] && [ "$(cat "$_LC/.mvlm-installed")" = "$WANT" ] \
            && [ -f "$_LC/llama.cpp/convert_hf_to_gguf.py" ]; then
            if [ ! -f "$_LC/.mvlm-converter-installed" ] \
                || [ "$(cat "$_LC/.mvlm-converter-installed")" != "$CONVERTER_WANT" ]; then
                echo "[mvlm] adding llama.cpp's conversion requirements to $_LC"
                # shellcheck disable=SC2086
                "$_LC/bin/python" -m pip install --quiet --disable-pip-version-check $CONVERTER_WANT
                echo "$CONVERTER_WANT" > "$_LC/.mvlm-converter-installed"
            fi
            exit 0
        fi
        echo "[mvlm] setting up $_LC (llama-cpp-python $VERSION built from source, CPU only;" \
             "about 4 minutes on 2 idle cores)"
        START=$SECONDS
        rm -rf "$_LC"
        python3 -m venv "$_LC"
        echo '*' > "$_LC/.gitignore"  # a built environment, not the project's source
        PIP=("$_LC/bin/python" -m pip --quiet --disable-pip-version-check)
        "${PIP[@]}" download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$_LC/sdist"
        mkdir -p "$_LC/unpacked"
        tar -xzf "$_LC"/sdist/llama_cpp_python-*.tar.gz -C "$_LC/unpacked"
        mv "$_LC"/unpacked/llama_cpp_python-*/vendor/llama.cpp "$_LC/llama.cpp"
        rm -rf "$_LC/unpacked"
        # Built from the downloaded source distribution (--find-links), not from a second download.
        CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
            "${PIP[@]}" install --find-links "$_LC/sdist" --no-binary llama-cpp-python "llama-cpp-python==$VERSION"
        # shellcheck disable=SC2086
        "${PIP[@]}" install $CONVERTER_WANT
        echo "$CONVERTER_WANT" > "$_LC/.mvlm-converter-installed"
        echo "$WANT" > "$_LC/.mvlm-installed"
        echo "[mvlm] $_LC ready in $((SECONDS - START)) s"
    ) || return 1 2>/dev/null || exit 1
    export MVLM_LLAMA_CPP_PYTHON="$_LC/bin/python"
    export MVLM_LLAMA_CPP_DIR="$_LC/llama.cpp"
fi
