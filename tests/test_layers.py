"""The package layers hold: each package imports only those below it (setup.cfg's import-linter contracts),
and no mvlm import hides inside a function (where a layer break would escape the contracts' notice only
until it runs)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def test_import_linter_contracts_are_kept():
    result = subprocess.run([LINT_IMPORTS, "--config", os.path.join(REPO, "setup.cfg")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_layer_break_is_caught(tmp_path):
    """The contracts are not vacuous: the data layer importing the model fails them."""
    package = tmp_path / "mvlm"
    subprocess.run(["cp", "-r", os.path.join(REPO, "mvlm"), str(package)], check=True)
    (package / "data" / "sneaky.py").write_text("from mvlm.model.modeling import LlavaForCausalLM\n")
    result = subprocess.run([LINT_IMPORTS, "--config", os.path.join(REPO, "setup.cfg")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0
    assert "mvlm.data.sneaky -> mvlm.model.modeling" in result.stdout


def _function_level_imports(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    found = []
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mvlm":
                    found.append(f"{os.path.relpath(path, REPO)}:{node.lineno} from {node.module}")
                elif isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "mvlm" for alias in node.names):
                    found.append(f"{os.path.relpath(path, REPO)}:{node.lineno} import")
    return found


@pytest.mark.parametrize("top", ["mvlm", "bench"])
def test_no_mvlm_import_inside_a_function(top):
    paths = [os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(REPO, top))
             for name in names if name.endswith(".py")]
    assert [hit for path in sorted(paths) for hit in _function_level_imports(path)] == []


def test_the_benchmarks_do_not_import_the_tests():
    for name in os.listdir(os.path.join(REPO, "bench")):
        if name.endswith(".py"):
            with open(os.path.join(REPO, "bench", name), encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
            modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
            assert not [module for module in modules if module.split(".")[0] == "tests"], name
