"""Export to HuggingFace LLaVA: transformers' own LlavaForConditionalGeneration + AutoProcessor give mvlm's
pixels, prompt, logits (atol 1e-4) and greedy tokens, with no missing or unexpected keys; feature layers are
written as negative indices; refusals leave nothing behind; the chat templates render as mvlm's, led by the
BOS where the tokenizer puts one first, and tokenize (vLLM's way, apply_chat_template's) to mvlm's prompt
ids; --conv-mode sets the template, an export without one warns; and, where a transformers 4.x interpreter
is given (MVLM_TRANSFORMERS4_PYTHON), the export loads there with the same logits."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mvlm.conversation import conv_templates
from mvlm.convert.chat_template import chat_template_for
from mvlm.convert.to_hf import export_to_hf
from mvlm.convert.to_hf import main as to_hf
from mvlm.data.images import process_images
from mvlm.data.tokenize import bos_prefix, conversation_from_sample, tokenize_prompt
from mvlm.model.builder import build_model, save_checkpoint

ATOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = {"id": "q", "image": "x.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": "A red square."},
    {"from": "human", "value": "Where is it?"}, {"from": "gpt", "value": "On the left."}]}
MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
    {"role": "user", "content": [{"type": "text", "text": "Where is it?"}]},
]


def image():
    """A non-square picture, so padding to a square and resizing both matter."""
    picture = Image.new("RGB", (45, 30), (200, 30, 30))
    picture.paste((20, 20, 220), (10, 5, 25, 20))
    return picture


def strong_model(checkpoints, family, tower, conv_mode, **kwargs):
    torch.manual_seed(3)
    model, tokenizer, image_processor = build_model(checkpoints("llm", family), checkpoints("tower", tower), **kwargs)
    with torch.no_grad():
        for parameter in model.multi_modal_projector.parameters():
            parameter.normal_(std=0.5)
    model.config.conv_mode = conv_mode
    return model.eval(), tokenizer, image_processor


def mvlm_prompt(model, tokenizer, conv_mode, num_image_tokens=None):
    """SAMPLE's prompt (its last answer open) as mvlm renders it, and its ids (image runs of
    `num_image_tokens`, by default the model's)."""
    conv = conversation_from_sample(SAMPLE, conv_mode, tokenizer)
    conv.messages[-1][1] = None
    return conv.get_prompt(), tokenize_prompt(conv, tokenizer, num_image_tokens or model.num_image_tokens)[None]


def bos_text(tokenizer, conv_mode="vicuna_v1"):
    """What the exported template writes before mvlm's prompt: nothing for the byte-level tokenizers (no BOS);
    for the SentencePiece ones (BOS first, "▁" only before a text's first word) the BOS, then a space that
    gives the first word its "▁" again, unless the prompt starts with a special token (plain's `<image>`)."""
    if not bos_prefix(tokenizer):
        return ""
    return "<s>" if conv_mode == "plain" else "<s> "


@pytest.mark.parametrize("family,tower,conv_mode,as_llama", [
    ("llama", "clip", "phi3_chat", False),
    ("qwen2", "siglip", "chatml_direct", False),  # tied embeddings, a tower without CLS
    ("gemma", "internvit", "vicuna_v1", False),
    ("phi3", "clip", "phi3_chat", True),  # split into a Llama-shaped LLM
])
def test_transformers_reproduces_mvlm(checkpoints, tmp_path, family, tower, conv_mode, as_llama):
    model, tokenizer, image_processor = strong_model(checkpoints, family, tower, conv_mode)
    out = str(tmp_path / "hf")
    export_to_hf(model, tokenizer, image_processor, out, as_llama=as_llama)
    hf, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    if as_llama:
        assert hf.config.text_config.model_type == "llama"
        assert "language_model.model.layers.0.self_attn.q_proj.weight" in load_file(os.path.join(out, "model.safetensors"))
    processor = AutoProcessor.from_pretrained(out)

    prompt, input_ids = mvlm_prompt(model, tokenizer, conv_mode)
    rendered = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert rendered == bos_text(tokenizer, conv_mode) + prompt
    inputs = processor(images=image(), text=prompt, return_tensors="pt")
    pixel_values = process_images([image()], image_processor, model.config.image_aspect_ratio)
    assert torch.allclose(inputs["pixel_values"], pixel_values, atol=1e-6)
    if conv_mode != "vicuna_v1":  # mvlm tokenizes vicuna's " ASSISTANT:" apart from the turn before it
        assert torch.equal(inputs["input_ids"], input_ids)
    with torch.no_grad():
        expected = model(input_ids=input_ids, pixel_values=pixel_values).logits
        actual = hf(input_ids=input_ids, pixel_values=inputs["pixel_values"]).logits
    assert torch.allclose(actual, expected, atol=ATOL), (actual - expected).abs().max()
    new_tokens = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=5, do_sample=False)
    hf_tokens = hf.generate(input_ids=input_ids, pixel_values=inputs["pixel_values"], max_new_tokens=5, do_sample=False)
    assert torch.equal(hf_tokens[:, input_ids.shape[1]:], new_tokens)


@pytest.mark.parametrize("layers,exported", [(0, -4), ([0, 2], [-4, -2])])  # a 3-layer tower: 4 hidden states
def test_feature_layers_export_as_negative_indices(checkpoints, tmp_path, layers, exported):
    """transformers' LLaVA reads layer 0 as "no hidden states" (falsy); the negative index selects the same."""
    model, tokenizer, image_processor = strong_model(checkpoints, "llama", "clip", "phi3_chat",
                                                     vision_feature_layer=layers)
    export_to_hf(model, tokenizer, image_processor, str(tmp_path / "hf"))
    hf = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "hf"))
    assert hf.config.vision_feature_layer == exported
    _, input_ids = mvlm_prompt(model, tokenizer, "phi3_chat")
    pixel_values = process_images([image()], image_processor, "pad")
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=input_ids, pixel_values=pixel_values).logits,
                              model(input_ids=input_ids, pixel_values=pixel_values).logits, atol=ATOL)


def test_linear_projector_exports_as_linear_then_identity(checkpoints, tmp_path):
    model, tokenizer, image_processor = strong_model(checkpoints, "llama", "clip", "vicuna_v1", projector_type="linear")
    export_to_hf(model, tokenizer, image_processor, str(tmp_path / "hf"))
    hf = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "hf"))
    _, input_ids = mvlm_prompt(model, tokenizer, "vicuna_v1")
    pixel_values = process_images([image()], image_processor, "pad")
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=input_ids, pixel_values=pixel_values).logits,
                              model(input_ids=input_ids, pixel_values=pixel_values).logits, atol=ATOL)


@pytest.mark.parametrize("change,reason", [
    (lambda model: None, "head has a bias"),  # Phi-2
    (lambda model: setattr(model.config, "projector_type", "mlp3x_gelu"), "projector 'mlp3x_gelu'"),
    (lambda model: setattr(model.config.text_config, "final_logit_softcapping", 30.0), "final_logit_softcapping"),
    (lambda model: setattr(model.config, "image_aspect_ratio", "anyres"), "anyres"),
])
def test_what_hf_llava_cannot_hold_is_refused_and_nothing_written(checkpoints, tmp_path, change, reason):
    family = "phi" if reason == "head has a bias" else "llama"
    model, tokenizer, image_processor = strong_model(checkpoints, family, "clip", "vicuna_v1")
    change(model)
    with pytest.raises(ValueError, match=reason):
        export_to_hf(model, tokenizer, image_processor, str(tmp_path / "hf"))
    assert os.listdir(tmp_path) == []


def test_as_llama_only_for_phi3(checkpoints, tmp_path):
    model, tokenizer, image_processor = strong_model(checkpoints, "llama", "clip", "vicuna_v1")
    with pytest.raises(ValueError, match="--as-llama splits Phi-3"):
        export_to_hf(model, tokenizer, image_processor, str(tmp_path / "hf"), as_llama=True)


@pytest.mark.parametrize("name", sorted(set(conv_templates) - {"auto"}))
@pytest.mark.parametrize("kind,with_bos", [("sentencepiece", True), ("bytelevel", False)])
def test_chat_templates_render_as_mvlm(tokenizers, name, kind, with_bos):
    """As mvlm's prompt, led by the BOS where the tokenizer puts one first (transformers' convention)."""
    tokenizer = tokenizers(kind, with_bos)
    system = [{"role": "system", "content": "Be brief."}]
    for messages, sample in ((MESSAGES, SAMPLE),
                             (system + MESSAGES, {**SAMPLE, "conversations": [
                                 {"from": "system", "value": "Be brief."}, *SAMPLE["conversations"]]})):
        conv = conversation_from_sample(sample, name, tokenizer)
        conv.messages[-1][1] = None
        rendered = tokenizer.apply_chat_template(messages, chat_template=chat_template_for(name, tokenizer),
                                                 tokenize=False, add_generation_prompt=True)
        assert rendered == bos_text(tokenizer, name) + conv.get_prompt()


@pytest.mark.parametrize("family,conv_mode", [
    ("llama", "phi3_chat"), ("llama", "mistral_instruct"), ("llama", "plain"),  # BOS first
    ("qwen2", "chatml_direct"), ("qwen2", "phi3_chat"),  # byte-level: no BOS
])
def test_chat_template_tokenizes_to_mvlm_prompt_ids(checkpoints, tmp_path, family, conv_mode):
    """vLLM's way (the rendered template tokenized with add_special_tokens=False), the processor's and the
    tokenizer's apply_chat_template(tokenize=True) all give mvlm's prompt ids, BOS included where mvlm has one."""
    model, tokenizer, image_processor = strong_model(checkpoints, family, "clip", conv_mode)
    out = str(tmp_path / "hf")
    export_to_hf(model, tokenizer, image_processor, out)
    processor = AutoProcessor.from_pretrained(out)
    _, expected = mvlm_prompt(model, tokenizer, conv_mode)
    assert (expected[0, 0].item() == tokenizer.bos_token_id) == (family == "llama")

    rendered = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    vllm_way = processor(images=image(), text=rendered, add_special_tokens=False, return_tensors="pt")
    assert vllm_way["input_ids"].tolist() == expected.tolist()
    with_image = [{**MESSAGES[0], "content": [{"type": "image", "image": image()}, *MESSAGES[0]["content"][1:]]},
                  *MESSAGES[1:]]
    processor_way = processor.apply_chat_template(with_image, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True, return_tensors="pt")
    assert processor_way["input_ids"].tolist() == expected.tolist()
    tokenizer_way = processor.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                                            return_dict=False)
    assert tokenizer_way == mvlm_prompt(model, tokenizer, conv_mode, num_image_tokens=1)[1][0].tolist()


def saved_checkpoint(checkpoints, tmp_path, conv_mode):
    """A llama + CLIP mvlm checkpoint folder that records `conv_mode` (None: no template)."""
    model, tokenizer, image_processor = strong_model(checkpoints, "llama", "clip", conv_mode)
    source = str(tmp_path / "mvlm")
    save_checkpoint(source, model, tokenizer, image_processor)
    return source, tokenizer


@pytest.mark.parametrize("flag", [[], ["--conv-mode", "auto"]])  # the tiny tokenizer has no template of its own
def test_to_hf_without_a_chat_template_warns_naming_the_flag(checkpoints, tmp_path, capsys, flag):
    source, _ = saved_checkpoint(checkpoints, tmp_path, None)
    out = str(tmp_path / "hf")
    to_hf(["--model-path", source, "--save-path", out, *flag])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--conv-mode" in line]
    assert len(warnings) == 1 and "warning" in warnings[0], warnings
    assert AutoProcessor.from_pretrained(out).chat_template is None


def test_to_hf_conv_mode_sets_the_chat_template(checkpoints, tmp_path, capsys):
    source, tokenizer = saved_checkpoint(checkpoints, tmp_path, "vicuna_v1")
    out = str(tmp_path / "hf")
    to_hf(["--model-path", source, "--save-path", out, "--conv-mode", "phi3_chat"])
    assert "--conv-mode" not in capsys.readouterr().err
    assert AutoProcessor.from_pretrained(out).chat_template == chat_template_for("phi3_chat", tokenizer)


def test_to_hf_unknown_conv_mode_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as raised:
        to_hf(["--model-path", str(tmp_path / "any"), "--save-path", str(tmp_path / "hf"), "--conv-mode", "vicuna"])
    message = str(raised.value)
    assert "\n" not in message and "'vicuna'" in message and all(name in message for name in conv_templates)
    assert os.listdir(tmp_path) == []


def test_to_hf_cli(checkpoints, tmp_path):
    model, tokenizer, image_processor = strong_model(checkpoints, "llama", "clip", "vicuna_v1")
    source = str(tmp_path / "mvlm")
    save_checkpoint(source, model, tokenizer, image_processor)
    out = str(tmp_path / "hf")
    command = [sys.executable, "-m", "mvlm.convert.to_hf", "--model-path", source, "--save-path", out]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(out, "config.json")) as handle:
        config = json.load(handle)
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["image_token_index"] == \
        model.config.image_token_id
    assert config["text_config"]["rope_theta"] == 10000.0  # what transformers 4.x reads
    keys = load_file(os.path.join(out, "model.safetensors"))
    assert any(key.startswith("vision_tower.vision_model.encoder.") for key in keys)  # 4.x's CLIP layout
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert again.returncode != 0 and "exists and is not an empty folder" in again.stderr.strip().splitlines()[-1]


TRANSFORMERS4 = os.environ.get("MVLM_TRANSFORMERS4_PYTHON")


@pytest.mark.skipif(not TRANSFORMERS4, reason="run through scripts/test.sh, which points MVLM_TRANSFORMERS4_PYTHON "
                                              "at .venv-transformers4 (transformers 4.57)")
@pytest.mark.parametrize("family,tower", [("llama", "clip"), ("qwen2", "siglip"), ("phi3", "clip")])
def test_export_loads_in_transformers_4(checkpoints, tmp_path, family, tower):
    """Not here: 4.57's LLaVA cannot run an InternVL vision tower (its forward fails in check_model_inputs),
    and 4.57's Gemma itself differs from 5.x's by ~1e-3 on the same weights, export or not."""
    model, tokenizer, image_processor = strong_model(checkpoints, family, tower, "vicuna_v1")
    if family == "llama":  # a non-default RoPE base: 4.x must read it from the legacy rope_theta field
        model, tokenizer, image_processor = rope_theta_model(checkpoints, tmp_path)
    out = str(tmp_path / "hf")
    export_to_hf(model, tokenizer, image_processor, out)
    _, input_ids = mvlm_prompt(model, tokenizer, "vicuna_v1")
    pixel_values = process_images([image()], image_processor, "pad")
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    tokens = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=5, do_sample=False)
    save_file({"input_ids": input_ids, "pixel_values": pixel_values, "logits": logits, "tokens": tokens},
              str(tmp_path / "expected.safetensors"))
    script = os.path.join(REPO, "scripts", "check_hf_export_transformers4.py")
    result = subprocess.run([TRANSFORMERS4, script, out, str(tmp_path / "expected.safetensors")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "transformers 4." in result.stdout


def rope_theta_model(checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = AutoModelForCausalLM.from_pretrained(checkpoints("llm", "llama"))
    llm.config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    folder = str(tmp_path / "llm-theta")
    llm.save_pretrained(folder)
    AutoTokenizer.from_pretrained(checkpoints("llm", "llama")).save_pretrained(folder)
    torch.manual_seed(3)
    model, tokenizer, image_processor = build_model(folder, checkpoints("tower", "clip"))
    with torch.no_grad():
        for parameter in model.multi_modal_projector.parameters():
            parameter.normal_(std=0.5)
    model.config.conv_mode = "vicuna_v1"
    return model.eval(), tokenizer, image_processor
