"""Run one of llama.cpp's conversion scripts with its own gguf-py, as a child process of mvlm.convert.to_gguf.

    python gguf_convert_runner.py --gguf-py DIR --script SCRIPT [--bpe-pre-tokenizer NAME] -- SCRIPT_ARGS...

It imports nothing from mvlm (it runs as a plain script), puts the tree's gguf-py first on the path so the
script writes the GGUF layout of the llama.cpp it came with, and runs the script as `__main__`.

`--bpe-pre-tokenizer NAME`: llama.cpp recognises a byte-level BPE tokenizer's pre-tokenizer only by
hashing how known published vocabularies split a test text, so a tokenizer with a vocabulary of its own
(retrained, or a test's tiny one) is refused even when its tokenizer.json declares a pre-tokenizer
llama.cpp implements. mvlm passes NAME only when tokenizer.json declares exactly one that llama.cpp
knows by that name (mvlm.convert.gguf_language_model.declared_bpe_pre_tokenizer); it is used only
where llama.cpp's own check recognises nothing, and the script says so on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys


def _patch_pre_tokenizer(module: object, name: str) -> None:
    """Let the converter's TextModel fall back to `name` where its hash check recognises nothing."""
    text_model = getattr(module, "TextModel", None)
    if text_model is None:  # newer trees keep the model classes in the `conversion` package
        text_model = getattr(sys.modules.get("conversion"), "TextModel", None)
    if text_model is None or not hasattr(text_model, "get_vocab_base_pre"):
        raise SystemExit("this llama.cpp's convert_hf_to_gguf.py has no TextModel.get_vocab_base_pre to fall back from")
    recognised = text_model.get_vocab_base_pre

    def get_vocab_base_pre(self: object, tokenizer: object) -> str:
        try:
            return recognised(self, tokenizer)
        except NotImplementedError:
            print(f"mvlm: llama.cpp does not know this vocabulary; its tokenizer.json declares the {name!r} "
                  "pre-tokenizer, which is used", file=sys.stderr)
            return name

    text_model.get_vocab_base_pre = get_vocab_base_pre


def main() -> None:
    separator = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf-py", required=True)
    parser.add_argument("--script", required=True)
    parser.add_argument("--bpe-pre-tokenizer", default=None)
    args = parser.parse_args(sys.argv[1:separator])
    sys.path[:0] = [os.path.abspath(args.gguf_py), os.path.dirname(os.path.abspath(args.script))]
    sys.argv = [args.script, *sys.argv[separator + 1:]]
    if args.bpe_pre_tokenizer is None:
        runpy.run_path(args.script, run_name="__main__")
        return
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", args.script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["convert_hf_to_gguf"] = module
    spec.loader.exec_module(module)
    _patch_pre_tokenizer(module, args.bpe_pre_tokenizer)
    module.main()


if __name__ == "__main__":
    main()
