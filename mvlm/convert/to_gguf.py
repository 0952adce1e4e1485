"""Export an mvlm checkpoint to GGUF for llama.cpp and ollama, with llama.cpp's own converters.

    python -m mvlm.convert.to_gguf --model-path CHECKPOINT --out-dir OUT [--outtype f32|f16|q8_0]
                                   [--llama-cpp DIR] [--converter-python PYTHON] [--conv-mode NAME] [--name NAME]

OUT (a new folder) receives:
  NAME-OUTTYPE.gguf       the language model, its tokenizer (with <image>) and the chat template
  NAME-mmproj-f16.gguf    the vision tower up to its feature layer and the projector, in the LLaVA layout
                          of llama.cpp's multimodal tools (llama-mtmd-cli, llama-server --mmproj,
                          llama-cpp-python's Llava15ChatHandler); NAME-mmproj-f32.gguf with --outtype f32
  Modelfile               for `ollama create NAME -f OUT/Modelfile`

The language model goes through llama.cpp's convert_hf_to_gguf.py as the HuggingFace causal LM it is
(a Phi-3 as a Llama, as XTuner's GGUF: mvlm.convert.gguf_language_model); the tower and projector through
its legacy convert_image_encoder_to_gguf.py (mvlm.convert.gguf_mmproj). Where llama.cpp cannot hold the
model, the export is refused with the reason before anything is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any

from mvlm.conversation import conv_templates
from mvlm.convert.chat_template import chat_template_for
from mvlm.convert.dtypes import checkpoint_dtype
from mvlm.convert.gguf_language_model import declared_bpe_pre_tokenizer, language_model_refusals, write_language_model
from mvlm.convert.gguf_llama_cpp import (
    LLAMA_CPP_PYTHON_VERSION,
    converter_python,
    default_cache_dir,
    locate_llama_cpp,
    run_converter,
)
from mvlm.convert.gguf_mmproj import CLASS_TOKEN_NOTE, convert_mmproj, has_class_token, mmproj_refusals
from mvlm.convert.ollama_modelfile import modelfile_text
from mvlm.convert.output import check_new_folder, staged_folder
from mvlm.errors import ExportError, user_errors_exit
from mvlm.loading import load_model

OUTTYPES = ("f32", "f16", "q8_0")
PROG = "mvlm.convert.to_gguf"


def gguf_refusals(model: Any) -> list[str]:
    """Why llama.cpp cannot hold `model` as mvlm runs it (empty when it can)."""
    return language_model_refusals(model) + mmproj_refusals(model)


def gguf_file_names(name: str, outtype: str) -> tuple[str, str]:
    """(language model file, mmproj file): the mmproj is float16 except for an f32 export."""
    return f"{name}-{outtype}.gguf", f"{name}-mmproj-{'f32' if outtype == 'f32' else 'f16'}.gguf"


def export_to_gguf(
    loaded: Any, out_dir: str, outtype: str = "f16", llama_cpp: str | None = None, conv_mode: str | None = None,
    name: str = "model", python: str | None = None,
) -> tuple[str, str, str]:
    """Write the two GGUF files and the Modelfile into the new folder `out_dir`; nothing is left there on
    a refusal or a failure. Returns the paths of (language model, mmproj, Modelfile)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    if outtype not in OUTTYPES:
        raise ExportError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    reasons = gguf_refusals(model)
    if reasons:
        raise ExportError("llama.cpp cannot hold this model: " + "; ".join(reasons))
    mode = conv_mode or getattr(model.config, "conv_mode", None)
    if mode is None:
        raise ExportError("the checkpoint records no conv_mode (chat template); pass --conv-mode NAME, one of "
                          f"{', '.join(sorted(conv_templates))}")
    check_new_folder(out_dir, "--out-dir")
    python = converter_python(python)
    tree = locate_llama_cpp(llama_cpp)
    template = chat_template_for(mode, tokenizer)
    lm_name, mmproj_name = gguf_file_names(name, outtype)
    with staged_folder(out_dir, "--out-dir") as staging, tempfile.TemporaryDirectory(prefix="mvlm-gguf-") as work:
        lm_folder = os.path.join(work, "language_model")
        write_language_model(model, tokenizer, lm_folder, template)
        lm_args = [lm_folder, "--outfile", os.path.join(staging, lm_name), "--outtype", outtype, "--model-name", name]
        run_converter(tree, python, tree.convert_hf, lm_args, "the language model",
                      bpe_pre_tokenizer=declared_bpe_pre_tokenizer(tokenizer))
        mmproj_type = "f32" if outtype == "f32" else "f16"
        mmproj = convert_mmproj(tree, python, model, loaded.image_processor, work, mmproj_type, name)
        shutil.move(mmproj, os.path.join(staging, mmproj_name))
        with open(os.path.join(staging, "Modelfile"), "w", encoding="utf-8") as handle:
            handle.write(modelfile_text(lm_name, mmproj_name, mode, tokenizer, loaded.context_length))
    return os.path.join(out_dir, lm_name), os.path.join(out_dir, mmproj_name), os.path.join(out_dir, "Modelfile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", "--model_path", required=True, help="an mvlm checkpoint (or any folder "
                        "mvlm.loading reads)")
    parser.add_argument("--model-base", "--model_base", default=None, help="the base model of a LoRA folder")
    parser.add_argument("--out-dir", "--out_dir", required=True, help="a new (or empty) folder for the files")
    parser.add_argument("--outtype", choices=OUTTYPES, default="f16",
                        help="the language model's weights (default f16); the mmproj is f16, or f32 with f32")
    parser.add_argument("--llama-cpp", "--llama_cpp", default=None, metavar="DIR",
                        help="a llama.cpp source tree whose convert_hf_to_gguf.py, gguf-py and tools/mtmd/"
                             "legacy-models convert. Default: the llama.cpp vendored in llama-cpp-python "
                             f"{LLAMA_CPP_PYTHON_VERSION}'s source distribution, downloaded once with `pip "
                             f"download --no-deps --no-binary :all:` and unpacked into {default_cache_dir()} "
                             "($MVLM_CACHE moves it)")
    parser.add_argument("--converter-python", "--converter_python", default=None, metavar="PYTHON",
                        help="the Python that runs llama.cpp's converters, with its conversion requirements "
                             "(torch, transformers 4.x, numpy, PyYAML, tqdm, sentencepiece); default: this one, "
                             "where its transformers is 4.x")
    parser.add_argument("--conv-mode", "--conv_mode", default=None,
                        help="the chat template to write (one of mvlm's); default: the checkpoint's")
    parser.add_argument("--name", default=None, help="the files' name (default: the checkpoint folder's name)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    name = args.name or os.path.basename(os.path.normpath(args.model_path))
    with user_errors_exit(PROG):
        if args.conv_mode is not None and args.conv_mode not in conv_templates:
            raise ExportError(f"unknown --conv-mode {args.conv_mode!r}; known: {', '.join(sorted(conv_templates))}")
        loaded = load_model(args.model_path, args.model_base, torch_dtype=checkpoint_dtype(args.model_path))
        if has_class_token(loaded.model) and not gguf_refusals(loaded.model):
            print(f"{PROG}: warning: {CLASS_TOKEN_NOTE}", file=sys.stderr)
        lm_file, mmproj_file, modelfile = export_to_gguf(loaded, args.out_dir, args.outtype, args.llama_cpp,
                                                         args.conv_mode, name, args.converter_python)
    print(f"wrote {lm_file}, {mmproj_file} and {modelfile}\n"
          f"  llama.cpp: llama-mtmd-cli -m {lm_file} --mmproj {mmproj_file} --image IMAGE -p QUESTION --temp 0\n"
          f"  ollama:    cd {args.out_dir} && ollama create {name} -f Modelfile && ollama run {name}")


if __name__ == "__main__":
    main()
