"""--packing: one flattened row per batch with its samples' boundaries, whose loss equals the padded batch's."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Qwen2Config

from mvlm.constants import IGNORE_INDEX
from mvlm.data.dataset import DataConfig, LazySupervisedDataset, SupervisedCollator
from mvlm.data.formats import load_samples
from mvlm.model.builder import build_model
from mvlm.model.packed_attention import (
    PER_SAMPLE,
    VARLEN,
    choose_packed_attention,
    per_sample_attention,
    use_packed_attention,
    varlen_attention,
    varlen_unusable_reason,
)
from mvlm.train.train import main
from tests.helpers.training import common_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")


def test_collator_packs_the_whole_batch_into_one_row_with_boundaries():
    features = [
        {"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([IGNORE_INDEX, 2, 3]),
         "pixel_values": torch.zeros(1, 3, 2, 2)},
        {"input_ids": torch.tensor([4, 5]), "labels": torch.tensor([4, 5]), "pixel_values": None},
        {"input_ids": torch.tensor([6]), "labels": torch.tensor([6]), "pixel_values": torch.ones(1, 3, 2, 2)},
    ]
    batch = SupervisedCollator(pad_token_id=0, packing=True)(features)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    # Each sample's first label is ignored: in the row it would be predicted from the previous sample's end.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]]
    for name in ("cu_seq_lens_q", "cu_seq_lens_k"):
        assert batch[name].dtype == torch.int32 and batch[name].tolist() == [0, 3, 5, 6]
    assert batch["max_length_q"] == batch["max_length_k"] == 3
    assert "attention_mask" not in batch
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0]  # images in the order their tokens stand


def qa_features(checkpoints, data, family):
    """A model with plain SDPA attention and eight samples of its family's template, images and text-only mixed."""
    model, tokenizer, image_processor = build_model(checkpoints("llm", family), checkpoints("tower", "clip"),
                                                    attn_implementation="sdpa")
    model.eval()
    template = {"phi": "phi", "phi3": "phi3_chat", "gemma": "gemma", "qwen2": "chatml_direct"}.get(family, "vicuna_v1")
    dataset = LazySupervisedDataset(load_samples(data["qa"]), tokenizer, image_processor,
                                    DataConfig(conv_mode=template, num_image_tokens=model.num_image_tokens,
                                               image_folder=data["folder"]))
    features = [dataset[index] for index in range(8)]  # images and text-only samples (every 5th)
    assert any(feature["pixel_values"] is None for feature in features)
    assert any(feature["pixel_values"] is not None for feature in features)
    return model, tokenizer, features


def predictions(model, batch):
    """Loss, and the logits that predict each target token, in sample order."""
    output = model(**batch)
    return output.loss.item(), output.logits[:, :-1][batch["labels"][:, 1:] != IGNORE_INDEX]


@pytest.mark.parametrize("family", ["llama", "phi", "phi3", "gemma", "qwen2"])
def test_packed_loss_and_logits_equal_the_padded_batch(checkpoints, data, family):
    model, tokenizer, features = qa_features(checkpoints, data, family)
    padded = SupervisedCollator(tokenizer.pad_token_id)(features)
    packed = SupervisedCollator(tokenizer.pad_token_id, packing=True)(features)
    with torch.no_grad():
        expected_loss, expected_logits = predictions(model, padded)  # transformers' own SDPA
        # transformers' SDPA finds the samples of a single row from its restarting position_ids (a block mask);
        # positions that do not restart let the samples attend to each other.
        row = {key: packed[key] for key in ("input_ids", "labels", "position_ids", "pixel_values")}
        assert torch.allclose(predictions(model, row)[1], expected_logits, atol=1e-5)
        leaking = dict(row, position_ids=torch.arange(row["input_ids"].shape[1])[None])
        assert (predictions(model, leaking)[1] - expected_logits).abs().max() > 1e-3

        assert use_packed_attention(model, device=CPU) == PER_SAMPLE
        assert model.config.vision_config._attn_implementation == "sdpa"  # the tower keeps its attention
        loss, logits = predictions(model, packed)
        assert loss == pytest.approx(expected_loss, abs=1e-5)
        assert torch.allclose(logits, expected_logits, atol=1e-5)
        # The boundaries are what keep the samples apart: the same row as one sample predicts otherwise.
        whole = torch.tensor([0, row["input_ids"].shape[1]], dtype=torch.int32)
        one_sample = dict(packed, cu_seq_lens_q=whole, cu_seq_lens_k=whole)
        assert (predictions(model, one_sample)[1] - expected_logits).abs().max() > 1e-3
        # A padded batch through the packed function: ordinary SDPA with its attention mask.
        padded_loss, padded_logits = predictions(model, padded)
        assert padded_loss == pytest.approx(expected_loss, abs=1e-5)
        assert torch.allclose(padded_logits, expected_logits, atol=1e-5)


def test_a_batch_of_several_packed_rows_is_refused(checkpoints, data):
    model, tokenizer, features = qa_features(checkpoints, data, "llama")
    use_packed_attention(model, PER_SAMPLE)
    packed = SupervisedCollator(tokenizer.pad_token_id, packing=True)(features[:4])
    two_rows = dict(packed, **{key: packed[key].repeat(2, 1) for key in ("input_ids", "labels", "position_ids")})
    two_rows["pixel_values"] = packed["pixel_values"].repeat(2, 1, 1, 1)
    with torch.no_grad(), pytest.raises(ValueError, match="must be one flattened row"):
        model(**two_rows)
    # Rows packed the old way (restarting positions, no boundaries) would attend across samples: refused too.
    without_boundaries = {key: two_rows[key] for key in ("input_ids", "labels", "position_ids", "pixel_values")}
    with torch.no_grad(), pytest.raises(ValueError, match="restart inside a row"):
        model(**without_boundaries)


def qkv(rows=1, tokens=6, heads=4, key_heads=2, head_dim=8, device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(rows, count, tokens, head_dim, generator=generator).to(device, dtype)
            for count in (heads, key_heads, key_heads)]


BOUNDARIES = {"cu_seq_lens_q": torch.tensor([0, 4, 6], dtype=torch.int32),
              "cu_seq_lens_k": torch.tensor([0, 4, 6], dtype=torch.int32), "max_length_q": 4, "max_length_k": 4}


def moved(batch, device):
    return {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in batch.items()}


@pytest.mark.parametrize("attention", [per_sample_attention, varlen_attention])
def test_packed_attention_functions_refuse_what_they_cannot_keep_apart(attention):
    module = nn.Module()
    with pytest.raises(ValueError, match="must be one flattened row"):
        attention(module, *qkv(rows=2), None, **BOUNDARIES)
    with pytest.raises(ValueError, match="needs both cu_seq_lens_q and cu_seq_lens_k"):
        attention(module, *qkv(), None, cu_seq_lens_q=BOUNDARIES["cu_seq_lens_q"])
    with pytest.raises(ValueError, match="no attention_mask"):
        attention(module, *qkv(), torch.ones(1, 1, 6, 6, dtype=torch.bool), **BOUNDARIES)
    with pytest.raises(ValueError, match="restart inside a row"):
        attention(module, *qkv(), None, position_ids=torch.tensor([[0, 1, 2, 3, 0, 1]]))


def test_varlen_refuses_soft_capping_and_dropout():
    with pytest.raises(ValueError, match="no logit soft-capping"):
        varlen_attention(nn.Module(), *qkv(), None, softcap=50.0, **BOUNDARIES)
    with pytest.raises(ValueError, match="no attention dropout"):
        varlen_attention(nn.Module(), *qkv(), None, dropout=0.1, **BOUNDARIES)


def test_varlen_call_fits_the_installed_kernel():
    """On the meta device (this CPU has no kernel): the arguments the installed PyTorch's varlen_attn takes."""
    pytest.importorskip("torch.nn.attention.varlen")
    query, key, value = qkv(device="meta", dtype=torch.bfloat16)
    output, weights = varlen_attention(nn.Module(), query, key, value, None, scaling=0.5, sliding_window=3,
                                       **moved(BOUNDARIES, "meta"))
    assert output.shape == (1, 6, 4, 8) and weights is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch's varlen kernel runs on CUDA only")
@pytest.mark.parametrize("sliding_window", [None, 3])
def test_varlen_equals_per_sample_sdpa_on_a_gpu(sliding_window):
    pytest.importorskip("torch.nn.attention.varlen")
    query, key, value = qkv(tokens=6, device="cuda", dtype=torch.bfloat16)
    boundaries = moved(BOUNDARIES, "cuda")
    expected, _ = per_sample_attention(nn.Module(), query, key, value, None, sliding_window=sliding_window,
                                        **boundaries)
    output, _ = varlen_attention(nn.Module(), query, key, value, None, sliding_window=sliding_window, **boundaries)
    assert torch.allclose(output.float(), expected.float(), atol=2e-2)


def tiny_lm(kind):
    """Causal LMs with the attention features a packed function must follow: GQA, sliding window, soft-capping."""
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    config = {
        "llama": lambda: LlamaConfig(**common),
        "qwen2_window": lambda: Qwen2Config(use_sliding_window=True, sliding_window=3, max_window_layers=0, **common),
        "gemma2_softcap_window": lambda: Gemma2Config(head_dim=8, sliding_window=3, attn_logit_softcapping=0.5,
                                                      query_pre_attn_scalar=4, **common),
    }[kind]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2_window", "gemma2_softcap_window"])
def test_packed_sdpa_follows_gqa_sliding_window_and_soft_capping(kind):
    model = tiny_lm(kind)
    samples = [torch.randint(0, 64, (length,), generator=torch.Generator().manual_seed(length)) for length in (7, 2, 5)]
    with torch.no_grad():
        expected = torch.cat([model(input_ids=sample[None]).logits[0] for sample in samples])  # eager, one by one
        model.set_attn_implementation(PER_SAMPLE)
        row = {"input_ids": torch.cat(samples)[None],
               "position_ids": torch.cat([torch.arange(len(sample)) for sample in samples])[None],
               "cu_seq_lens_q": torch.tensor([0, 7, 9, 14], dtype=torch.int32),
               "cu_seq_lens_k": torch.tensor([0, 7, 9, 14], dtype=torch.int32), "max_length_q": 7, "max_length_k": 7}
        assert torch.allclose(model(**row).logits[0], expected, atol=1e-5)
        # The same samples padded into a batch: SDPA with the padding mask (and the window) that transformers builds.
        padded = torch.nn.utils.rnn.pad_sequence(samples, batch_first=True)
        mask = torch.arange(7)[None] < torch.tensor([7, 2, 5])[:, None]
        logits = model(input_ids=padded, attention_mask=mask.long()).logits
        assert torch.allclose(logits[mask], expected, atol=1e-5)


def test_the_packed_attention_is_chosen_by_what_can_run():
    llama = LlamaConfig()
    assert choose_packed_attention("flash_attention_2", None, llama, torch.bfloat16, CPU) == "flash_attention_2"
    assert choose_packed_attention("sdpa", None, llama, torch.float32, CPU) == PER_SAMPLE
    reason = varlen_unusable_reason(llama, torch.bfloat16, CPU)
    assert "CUDA GPUs only" in reason or "PyTorch >= 2.10" in reason
    gpu = torch.device("cuda")
    assert "bf16 or fp16" in varlen_unusable_reason(llama, torch.float32, gpu) or not torch.cuda.is_available()
    with pytest.raises(ValueError, match=f"{VARLEN} cannot train this model here"):
        choose_packed_attention("sdpa", VARLEN, llama, torch.float32, CPU)
    if torch.cuda.is_available():
        gemma2 = Gemma2Config(attn_logit_softcapping=50.0)
        assert "soft-capping" in varlen_unusable_reason(gemma2, torch.bfloat16, gpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attention needs a CUDA GPU")
def test_flash_attention_2_reads_the_boundaries(checkpoints, data):
    pytest.importorskip("flash_attn")
    model, tokenizer, features = qa_features(checkpoints, data, "llama")
    model.to("cuda", torch.bfloat16)
    padded = SupervisedCollator(tokenizer.pad_token_id)(features)
    packed = SupervisedCollator(tokenizer.pad_token_id, packing=True)(features)
    with torch.no_grad():
        expected = model(**moved(padded, "cuda")).loss
        model.language_model.set_attn_implementation("flash_attention_2")
        assert use_packed_attention(model) == "flash_attention_2"
        assert model(**moved(packed, "cuda")).loss.item() == pytest.approx(expected.item(), abs=2e-2)


def logged_losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_packed_training_equals_padded_training_and_saves_a_plain_checkpoint(checkpoints, data, tmp_path):
    def train(packing, output_dir):
        return main(common_flags(checkpoints, data["qa"], data["folder"], output_dir,
                                 "--version", "vicuna_v1", "--packing", str(packing), "--model_max_length", "256",
                                 "--max_steps", "5", "--learning_rate", "5e-3", "--save_strategy", "no"))

    padded = train(False, str(tmp_path / "padded"))
    out = str(tmp_path / "packed")
    packed = train(True, out)
    assert packed.model.config.text_config._attn_implementation == PER_SAMPLE
    assert packed.data_collator.packing
    assert logged_losses(packed) == pytest.approx(logged_losses(padded), abs=1e-4)
    assert logged_losses(packed)[-1] < logged_losses(packed)[0]

    def attention_keys(config, path=""):
        for key, value in config.items():
            if "attn_implementation" in key:
                yield f"{path}{key}={value}"
            if isinstance(value, dict):
                yield from attention_keys(value, f"{path}{key}.")

    with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
        assert list(attention_keys(json.load(handle))) == []
    # A fresh process, where mvlm's attention functions are not registered: plain transformers, mvlm's loader
    # and the HuggingFace LLaVA export all load the checkpoint.
    code = f"""
import mvlm.model
from transformers import AttentionInterface, AutoModelForCausalLM, LlavaForConditionalGeneration
from mvlm.convert.to_hf import main as to_hf
from mvlm.loading import load_pretrained_model
assert {PER_SAMPLE!r} not in AttentionInterface._global_mapping
model = AutoModelForCausalLM.from_pretrained({out!r})
assert model.config.text_config._attn_implementation == "sdpa", model.config.text_config._attn_implementation
load_pretrained_model({out!r}, device="cpu")
to_hf(["--model-path", {out!r}, "--save-path", {str(tmp_path / "hf")!r}])
LlavaForConditionalGeneration.from_pretrained({str(tmp_path / "hf")!r})
print("loaded")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0 and "loaded" in result.stdout, result.stderr[-3000:]


def test_a_packed_attention_without_packing_is_refused(checkpoints, data, tmp_path):
    with pytest.raises(SystemExit, match="attends within packed rows; add --packing True"):  # one line, exit 1
        main(common_flags(checkpoints, data["qa"], data["folder"], str(tmp_path / "out"),
                          "--attn_implementation", PER_SAMPLE, "--max_steps", "1"))
