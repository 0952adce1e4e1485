"""llama.cpp's own conversion scripts: where they are, and running them.

mvlm writes no GGUF itself: llama.cpp's `convert_hf_to_gguf.py` converts the language model and its
legacy `tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py` the vision tower and projector (the
way LLaVA-1.5's and XTuner's LLaVA-Phi-3's mmproj files were made; its newer `--mmproj` mode refuses
CLIP-based LLaVA). Both read `gguf-py` from the same tree, so the files match the llama.cpp they came
with. The tree is the one the user names (`--llama-cpp`), or else the copy vendored in
llama-cpp-python's source distribution, downloaded once with pip into a cache folder: the version that
tests/test_to_gguf.py checks the files against (scripts/llama_cpp_env.sh pins the same version).

The scripts run as child processes (their output is shown only when they fail) in a Python with
llama.cpp's conversion requirements (its requirements/requirements-convert_legacy_llama.txt: torch,
transformers 4.x, numpy, PyYAML, tqdm, sentencepiece): the legacy image-encoder converter reads a
tower's `vision_model` level, which transformers 5's vision towers no longer have. That Python is the
one the user names (`--converter-python`), or this one where its transformers is 4.x.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import Sequence

from mvlm.errors import ExportError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The llama-cpp-python release whose vendored llama.cpp converts by default; scripts/llama_cpp_env.sh builds it."""
CONVERT_HF = "convert_hf_to_gguf.py"
LEGACY_IMAGE_ENCODER = os.path.join("tools", "mtmd", "legacy-models", "convert_image_encoder_to_gguf.py")
GGUF_PY = "gguf-py"
NEEDED = (CONVERT_HF, LEGACY_IMAGE_ENCODER, os.path.join(GGUF_PY, "gguf", "__init__.py"))
"""What a llama.cpp tree must hold for mvlm's conversion."""
EXTRACTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "tools/mtmd/legacy-models/", "LICENSE")
"""The parts of the vendored tree unpacked into the cache: the converters, not the C++ sources."""
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gguf_convert_runner.py")


@dataclasses.dataclass(frozen=True)
class LlamaCppTree:
    """A llama.cpp source tree with the conversion scripts mvlm runs."""

    root: str

    @property
    def convert_hf(self) -> str:
        return os.path.join(self.root, CONVERT_HF)

    @property
    def legacy_image_encoder(self) -> str:
        return os.path.join(self.root, LEGACY_IMAGE_ENCODER)

    @property
    def gguf_py(self) -> str:
        return os.path.join(self.root, GGUF_PY)


def default_cache_dir() -> str:
    """Where the vendored llama.cpp is unpacked: $MVLM_CACHE, else $XDG_CACHE_HOME/mvlm, else ~/.cache/mvlm."""
    base = os.environ.get("MVLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mvlm")
    return os.path.join(base, f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}")


def check_tree(root: str, flag: str = "--llama-cpp") -> LlamaCppTree:
    """`root` as a LlamaCppTree, or an ExportError naming what it lacks."""
    missing = [path for path in NEEDED if not os.path.isfile(os.path.join(root, path))]
    if missing:
        raise ExportError(f"{flag} {root} is not a llama.cpp source tree with its converters: it lacks "
                          f"{', '.join(missing)}")
    return LlamaCppTree(os.path.abspath(root))


def locate_llama_cpp(root: str | None = None, cache_dir: str | None = None) -> LlamaCppTree:
    """The tree at `root`, or the vendored copy of llama-cpp-python's source distribution in `cache_dir`
    (downloaded and unpacked there first when missing)."""
    if root is not None:
        return check_tree(root)
    cache_dir = cache_dir or default_cache_dir()
    vendored = os.path.join(cache_dir, "llama.cpp")
    if not all(os.path.isfile(os.path.join(vendored, path)) for path in NEEDED):
        download_vendored(cache_dir)
    return check_tree(vendored, "the vendored llama.cpp in")


def download_vendored(cache_dir: str) -> None:
    """`pip download` llama-cpp-python's source distribution and unpack its vendored llama.cpp converters
    into cache_dir/llama.cpp (atomically: a failed download leaves no half tree)."""
    os.makedirs(cache_dir, exist_ok=True)
    print(f"mvlm.convert.to_gguf: downloading llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s source distribution "
          f"for its llama.cpp converters (once; into {cache_dir})", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                   "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", work]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = [name for name in os.listdir(work) if name.endswith(".tar.gz")]
        if result.returncode != 0 or not archives:
            raise ExportError(f"could not download llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s source distribution "
                              f"({_last_line(result.stderr)}); point --llama-cpp at a llama.cpp source tree instead")
        unpacked = os.path.join(work, "llama.cpp")
        with tarfile.open(os.path.join(work, archives[0])) as archive:
            members = []
            for member in archive.getmembers():
                parts = member.name.split("/", 3)  # llama_cpp_python-X/vendor/llama.cpp/<path>
                if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3].startswith(EXTRACTED):
                    member.name = parts[3]
                    members.append(member)
            archive.extractall(unpacked, members=members, filter="data")
        os.replace(unpacked, os.path.join(cache_dir, "llama.cpp"))


CONVERTER_PROBE = ("import json, numpy, sentencepiece, torch, tqdm, yaml, transformers; "
                   "print(json.dumps({'transformers': transformers.__version__}))")
"""What a converter Python must import; prints its transformers version."""


def converter_python(python: str | None = None) -> str:
    """The Python that runs llama.cpp's converters: `python`, else this one; an ExportError when it lacks
    llama.cpp's conversion requirements or has transformers 5."""
    return _checked_converter_python(python or sys.executable)


@functools.lru_cache(maxsize=None)
def _checked_converter_python(chosen: str) -> str:
    """converter_python's check, once per Python (it imports torch and transformers there: seconds)."""
    hint = ("pass --converter-python, a Python with llama.cpp's conversion requirements (e.g. a venv with "
            "`pip install torch 'transformers==4.57.*' numpy pyyaml tqdm sentencepiece safetensors`)")
    result = subprocess.run([chosen, "-c", CONVERTER_PROBE], capture_output=True, text=True)
    if result.returncode != 0:
        raise ExportError(f"{chosen} cannot run llama.cpp's converters ({_last_line(result.stderr)}); {hint}")
    version = json.loads(result.stdout.strip().splitlines()[-1])["transformers"]
    if int(version.split(".")[0]) >= 5:
        raise ExportError(f"{chosen} has transformers {version}, and llama.cpp's image-encoder converter needs 4.x "
                          f"(it reads the `vision_model` level that transformers 5's towers dropped); {hint}")
    return chosen


def run_converter(tree: LlamaCppTree, python: str, script: str, args: Sequence[str], what: str,
                  bpe_pre_tokenizer: str | None = None) -> None:
    """Run one of the tree's conversion scripts (through gguf_convert_runner.py, which puts the tree's
    gguf-py first on the path and passes `bpe_pre_tokenizer` on); a failure is an ExportError that
    quotes the script's last output line."""
    command = [python, RUNNER, "--gguf-py", tree.gguf_py, "--script", script]
    if bpe_pre_tokenizer:
        command += ["--bpe-pre-tokenizer", bpe_pre_tokenizer]
    result = subprocess.run([*command, "--", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ExportError(f"llama.cpp's {os.path.basename(script)} could not convert {what}: "
                          f"{_last_line(result.stderr or result.stdout)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
