"""GGUF export (mvlm.convert.to_gguf), checked by llama.cpp itself.

Trained tiny checkpoints of three recipes (tests/helpers/llama_cpp_models.py) are converted with llama.cpp's
own converters, and llama.cpp answers the demo's held-out image questions through llama-cpp-python's
multimodal chat API (a Llava15ChatHandler with the mmproj file and mvlm's chat template, run in the side
environment by tests/helpers/llama_cpp_answers.py). At f32 its greedy answers must be mvlm's, its prompt
tokens mvlm's, its image embeddings mvlm's projector output; at f16 and q8_0 most answers must be (the
share of identical answers per recipe and output type is printed).

llama.cpp up to the version llama-cpp-python 0.3.36 vendors orders a CLIP tower's class token wrongly
(mvlm.convert.gguf_mmproj.CLASS_TOKEN_NOTE): for the CLIP recipes the test checks that llama.cpp's image
embeddings are exactly what that ordering gives from mvlm's weights (so the files are right and the
difference is llama.cpp's), prints the f32 agreement and is an expected failure; with a llama.cpp that
computes mvlm's embeddings it checks the answers as for SigLIP.

The llama.cpp checks need the side environment that scripts/test.sh sets up (scripts/llama_cpp_env.sh:
MVLM_LLAMA_CPP_PYTHON, MVLM_LLAMA_CPP_DIR); without it they are skipped, saying so. The refusals run anywhere.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess

import pytest
import torch
from PIL import Image

from mvlm.convert import to_gguf
from mvlm.convert.chat_template import chat_template_for
from mvlm.convert.gguf_llama_cpp import LLAMA_CPP_PYTHON_VERSION
from mvlm.convert.gguf_mmproj import CLASS_TOKEN_NOTE, feature_layers, has_class_token
from mvlm.convert.gguf_language_model import space_prefix
from mvlm.convert.ollama_modelfile import go_template, writes_first_space
from mvlm.conversation import get_conversation
from mvlm.errors import ExportError
from mvlm.inference import encode_prompt, generate_answers, generation_config, new_conversation
from mvlm.loading import load_model
from mvlm.model.builder import build_model, save_checkpoint
from tests.helpers.llama_cpp_models import RECIPES, demo_data, train_checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSWERS_SCRIPT = os.path.join(REPO_ROOT, "tests", "helpers", "llama_cpp_answers.py")
LLAMA_CPP_PYTHON = os.environ.get("MVLM_LLAMA_CPP_PYTHON")
LLAMA_CPP_DIR = os.environ.get("MVLM_LLAMA_CPP_DIR")
needs_llama_cpp = pytest.mark.skipif(
    not (LLAMA_CPP_PYTHON and LLAMA_CPP_DIR),
    reason="llama.cpp's side environment is not set up (MVLM_LLAMA_CPP_PYTHON / MVLM_LLAMA_CPP_DIR unset): run the "
           "suite with scripts/test.sh, which builds llama-cpp-python from source once (scripts/llama_cpp_env.sh)",
)
OUTTYPES = ("f32", "f16", "q8_0")
MAX_NEW_TOKENS = 8
MIN_QUESTIONS = 20
MIN_LOW_PRECISION_AGREEMENT = 0.8
"""f16 and q8_0 round weights, so a near tie may go the other way; most answers must still be mvlm's."""
EMBEDDING_TOLERANCE = 0.01
"""Largest difference allowed, relative to the largest value, between llama.cpp's image embeddings and mvlm's:
its converter stores the patch convolution and the projector's matrices in float16 even for an f32 file."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run in one CPU thread: on a busy two-core machine, two threads that wait for each other
    made a training step 40 times slower (1.4 s instead of 35 ms) than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_data(str(tmp_path_factory.mktemp("demo-data")))


def _questions(demo) -> list[dict]:
    with open(demo.test_questions, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def mvlm_answers(loaded, demo, questions) -> tuple[list[str], list[list[int]], torch.Tensor]:
    """mvlm's greedy answers, prompt ids and pixel values for the questions, as its chat front ends ask."""
    model, tokenizer = loaded.model, loaded.tokenizer
    conv = new_conversation(model.config.conv_mode, tokenizer)
    prompts = []
    for question in questions:
        turn = conv.copy()
        turn.append_message(turn.roles[0], "<image>\n" + question["text"])
        turn.append_message(turn.roles[1], None)
        image = Image.open(os.path.join(demo.folder, question["image"])).convert("RGB")
        prompts.append(encode_prompt(turn, [image], tokenizer, loaded.image_processor, model))
    config = generation_config(model, tokenizer, max_new_tokens=MAX_NEW_TOKENS, stop_str=conv.stop_str)
    answers = [generated.text for generated in generate_answers(model, tokenizer, prompts, config)]
    pixels = torch.stack([prompt.pixel_values[0] for prompt in prompts])
    return answers, [prompt.input_ids.tolist() for prompt in prompts], pixels


@torch.no_grad()
def class_token_last_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projector output llama.cpp's LLaVA graph computes for a CLIP tower (CLASS_TOKEN_NOTE): the class
    token after the patches, positions 0..n in that order, projector rows 1..n. Attention does not see
    order, so this is mvlm's tower with the class token given the last position embedding and each patch
    its predecessor's, keeping patches 1..n-1 and the class token."""
    tower = copy.deepcopy(model.vision_tower)
    table = tower.embeddings.position_embedding.weight
    table.copy_(torch.cat([table[-1:], table[:-1]]))
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states[feature_layers(model)[0]]
    return model.multi_modal_projector(torch.cat([hidden[:, 2:], hidden[:, :1]], dim=1))


def ask_llama_cpp(files: tuple[str, str, str], template: str, stop: str | None, questions, demo, work: str,
                  embeddings: bool = False) -> dict:
    request = {"model": files[0], "mmproj": files[1], "chat_template": template, "stop": [stop] if stop else [],
               "max_tokens": MAX_NEW_TOKENS, "embeddings": embeddings,
               "questions": [{"image": os.path.join(demo.folder, q["image"]), "text": q["text"]} for q in questions]}
    request_path, answers_path = os.path.join(work, "request.json"), os.path.join(work, "answers.json")
    with open(request_path, "w", encoding="utf-8") as handle:
        json.dump(request, handle)
    result = subprocess.run([LLAMA_CPP_PYTHON, ANSWERS_SCRIPT, request_path, answers_path], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(answers_path, encoding="utf-8") as handle:
        return json.load(handle)


def agreement(ours: list[str], theirs: list[str]) -> float:
    return sum(a.strip() == b.strip() for a, b in zip(ours, theirs)) / len(ours)


def export(name: str, checkpoint: str, loaded, out_dir: str, outtype: str) -> tuple[str, str, str]:
    """The three files, for f32 through the command line, for the others through export_to_gguf."""
    if outtype == "f32":
        to_gguf.main(["--model-path", checkpoint, "--out-dir", out_dir, "--outtype", outtype, "--llama-cpp",
                      LLAMA_CPP_DIR, "--converter-python", LLAMA_CPP_PYTHON, "--name", name])
        files = tuple(os.path.join(out_dir, file)
                      for file in (*to_gguf.gguf_file_names(name, outtype), "Modelfile"))
    else:
        files = to_gguf.export_to_gguf(loaded, out_dir, outtype, LLAMA_CPP_DIR, name=name, python=LLAMA_CPP_PYTHON)
    assert sorted(os.listdir(out_dir)) == sorted(os.path.basename(file) for file in files)
    return files


def report(name: str, demo, answers: list[str], agreements: dict[str, float], capsys) -> None:
    """One line per recipe: how often mvlm is right (the model answers, not guesses), how often llama.cpp agrees."""
    with open(demo.test_answers, encoding="utf-8") as handle:
        right = [json.loads(line)["answer"] for line in handle]
    accuracy = sum(ours.strip() == truth for ours, truth in zip(answers, right)) / len(answers)
    with capsys.disabled():
        shares = ", ".join(f"{outtype} {share:.0%}" for outtype, share in agreements.items())
        print(f"\n[gguf] {name}: mvlm right on {accuracy:.0%} of {len(answers)} image questions; llama.cpp's greedy "
              f"answers identical to mvlm's: {shares}")


@needs_llama_cpp
@pytest.mark.parametrize("name", list(RECIPES))
def test_llama_cpp_answers_as_mvlm(name, demo, tmp_path, capsys):
    checkpoint = train_checkpoint(name, demo, str(tmp_path / "train"))
    loaded = load_model(checkpoint)
    model, tokenizer = loaded.model, loaded.tokenizer
    questions = _questions(demo)
    assert len(questions) >= MIN_QUESTIONS
    answers, prompt_ids, pixels = mvlm_answers(loaded, demo, questions)
    assert len(set(answers)) > 3, f"the trained model answers too uniformly to compare: {answers}"
    stop = get_conversation(model.config.conv_mode, tokenizer).stop_str
    template = chat_template_for(model.config.conv_mode, tokenizer)

    files = export(name, checkpoint, loaded, str(tmp_path / "gguf-f32"), "f32")
    f32 = ask_llama_cpp(files, template, stop, questions, demo, str(tmp_path), embeddings=True)
    agreements = {"f32": agreement(answers, f32["answers"])}
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for ours, theirs in zip(prompt_ids, f32["prompt_tokens"]):  # the same prompt, image positions aside
        assert len(theirs) == len(ours)
        assert [t for t, o in zip(theirs, ours) if o != image_id] == [o for o in ours if o != image_id]
    got = torch.tensor(f32["embeddings"])
    with torch.no_grad():
        expected = model.get_image_features(pixels[: len(got)])
    difference = ((got - expected).abs().max() / expected.abs().max()).item()
    if has_class_token(model) and difference > EMBEDDING_TOLERANCE:
        misordered = class_token_last_features(model, pixels[: len(got)])
        assert ((got - misordered).abs().max() / misordered.abs().max()).item() < EMBEDDING_TOLERANCE
        report(name, demo, answers, agreements, capsys)
        pytest.xfail(f"llama.cpp computes this CLIP tower's image embeddings with its class token misplaced "
                     f"(checked to the float16 weights' precision), so its answers differ: {CLASS_TOKEN_NOTE}")
    assert difference < EMBEDDING_TOLERANCE
    assert [answer.strip() for answer in f32["answers"]] == [answer.strip() for answer in answers]

    for outtype in ("f16", "q8_0"):
        files = export(name, checkpoint, loaded, str(tmp_path / f"gguf-{outtype}"), outtype)
        reply = ask_llama_cpp(files, template, stop, questions, demo, str(tmp_path))
        agreements[outtype] = agreement(answers, reply["answers"])
    report(name, demo, answers, agreements, capsys)
    assert min(agreements.values()) >= MIN_LOW_PRECISION_AGREEMENT


def _checkpoint(checkpoints, folder: str, llm: str = "llama", tower: str = "clip", **options) -> str:
    """A tiny checkpoint (tests/helpers/tiny.py models) with model-config overrides, saved to `folder`."""
    build = {key: options.pop(key) for key in ("projector_type", "vision_feature_layer",
                                               "vision_feature_select_strategy") if key in options}
    model, tokenizer, image_processor = build_model(checkpoints("llm", llm), checkpoints("tower", tower), **build)
    model.config.conv_mode = "v1"
    for key, value in options.items():
        setattr(model.config, key, value)
    save_checkpoint(folder, model, tokenizer, image_processor)
    return folder


@pytest.mark.parametrize("options, reason", [
    ({"image_aspect_ratio": "anyres"}, "anyres"),
    ({"projector_type": "linear"}, "linear, GELU, linear"),
    ({"vision_feature_layer": [-2, -1]}, "several feature layers"),
    ({"vision_feature_select_strategy": "full"}, "class token is kept"),
    ({"tower": "internvit"}, "'internvl_vision'"),
    ({"llm": "phi"}, "feed-forward width of 4 x hidden_size"),
])
def test_refused_before_anything_is_written(checkpoints, tmp_path, capsys, options, reason):
    model_path = _checkpoint(checkpoints, str(tmp_path / "model"), **options)
    out_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        to_gguf.main(["--model-path", model_path, "--out-dir", str(out_dir), "--llama-cpp", str(tmp_path / "none")])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("mvlm.convert.to_gguf: error: llama.cpp cannot hold this model:") and reason in error
    assert not out_dir.exists()


def test_transformers_5_cannot_run_the_image_encoder_converter(checkpoints, tmp_path):
    """This environment has transformers 5, whose towers lack the level llama.cpp's legacy converter reads."""
    loaded = load_model(_checkpoint(checkpoints, str(tmp_path / "model")))
    with pytest.raises(ExportError, match="transformers 5|needs 4.x"):
        to_gguf.export_to_gguf(loaded, str(tmp_path / "out"), llama_cpp=str(tmp_path / "none"))
    assert not (tmp_path / "out").exists()


def test_modelfile_template_renders_the_turns_as_mvlm(tokenizers):
    """The Go template writes the same constants around the turns as mvlm's v1 and phi3_chat templates, and
    opens with a space where mvlm's Jinja writes one after the BOS (a Llama tokenizer marking only the first
    word), since llama.cpp then adds no space itself."""
    llama_tokenizer, gpt2_tokenizer = tokenizers("sentencepiece", True), tokenizers("bytelevel", False)
    assert writes_first_space("v1", llama_tokenizer) and not writes_first_space("v1", gpt2_tokenizer)
    assert space_prefix(llama_tokenizer) is False and space_prefix(gpt2_tokenizer) is None
    v1 = go_template(get_conversation("v1"), first_space=True)
    assert v1.startswith(" {{ $.System }} ")
    assert 'USER: {{ .Content }} ' in v1 and "ASSISTANT: {{ .Content }}</s>" in v1
    phi3 = go_template(get_conversation("phi3_chat"))
    assert "<|user|>\n{{ .Content }}<|end|>\n" in phi3 and "{{ if $last }}<|assistant|>\n{{ end }}" in phi3
    assert go_template(get_conversation("llava_llama_2")).count("{{ if $first }}") == 1


def test_side_environment_builds_the_version_that_converts_by_default():
    with open(os.path.join(REPO_ROOT, "scripts", "llama_cpp_env.sh"), encoding="utf-8") as handle:
        pinned = re.search(r"MVLM_LLAMA_CPP_PYTHON_VERSION:-([0-9.]+)", handle.read()).group(1)
    assert pinned == LLAMA_CPP_PYTHON_VERSION
