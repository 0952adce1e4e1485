"""The fused loss (mvlm.model.fused_loss): the same loss and gradients as transformers' full-logits loss, for
every head kind (tied, biased, soft-capped), without ever running the head module; the fallback for an LM
whose logits are more than its head; and the same training run through Trainer with --fused_loss True/False.
Liger's CUDA kernel cannot run here (no GPU, not installed): only the chunked PyTorch path is tested."""

import logging

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

from mvlm.constants import IGNORE_INDEX
from mvlm.model.builder import build_model
from mvlm.model.fused_loss import causal_lm_loss
from mvlm.train.train import main
from tests.helpers import synthetic

TOLERANCE = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("num_items_in_batch", [None, 17])
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_chunked_loss_equals_for_causal_lm_loss(softcap, num_items_in_batch, chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    weight = torch.randn(37, 8, requires_grad=True)
    bias = torch.randn(37, requires_grad=True)
    labels = torch.randint(0, 37, (2, 9))
    labels[0, :4] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX
    logits = F.linear(hidden, weight, bias)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    expected = ForCausalLMLoss(logits, labels, 37, num_items_in_batch=num_items_in_batch)
    actual = causal_lm_loss(hidden, labels, weight, bias, softcap, num_items_in_batch, chunk_size=chunk_size)
    assert torch.allclose(actual, expected, **TOLERANCE)
    # An incoming gradient other than 1 (Trainer's loss scaling across processes) scales them all.
    for expected_grad, actual_grad in zip(torch.autograd.grad(expected * 3, (hidden, weight, bias)),
                                          torch.autograd.grad(actual * 3, (hidden, weight, bias))):
        assert torch.allclose(actual_grad, expected_grad, **TOLERANCE)


def test_a_frozen_head_gets_no_gradient():
    hidden = torch.randn(1, 5, 4, requires_grad=True)
    weight = torch.randn(11, 4)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, 5, 6]])
    loss = causal_lm_loss(hidden, labels, weight, chunk_size=2)
    (grad,) = torch.autograd.grad(loss, hidden)
    (expected,) = torch.autograd.grad(ForCausalLMLoss(hidden @ weight.T, labels, 11), hidden)
    assert torch.allclose(grad, expected, **TOLERANCE)


def mixed_batch(model):
    """Two rows: an image and text (right-padded), text only; labels on a few text tokens each."""
    image = [model.config.image_token_id] * model.num_image_tokens
    rows = [[5, *image, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17]]
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    labels = input_ids.clone()
    labels[0, : 1 + len(image)] = IGNORE_INDEX
    labels[1, :2] = IGNORE_INDEX
    labels[attention_mask == 0] = IGNORE_INDEX
    pixel_values = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, pixel_values=pixel_values)


def loss_and_gradients(model, fused: bool, **batch):
    model.config.fused_loss = fused
    model.zero_grad(set_to_none=True)
    head_calls = []
    hook = model.language_model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
    try:
        output = model(**batch)
    finally:
        hook.remove()
    output.loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return output, grads, len(head_calls)


@pytest.mark.parametrize("family", ["llama", "phi", "phi3", "gemma", "qwen2", "gemma2"])
@pytest.mark.parametrize("num_items_in_batch", [None, 13])
def test_fused_training_forward_equals_the_full_loss_and_gradients(checkpoints, family, num_items_in_batch):
    """Tied head (qwen2, gemma, gemma2), biased head (phi), soft-capped logits (gemma2, cap 3), with image and
    text-only rows: loss and every gradient (tower, projector, LM, head) as with the LM's own full loss."""
    model, _, _ = build_model(checkpoints("llm", family), checkpoints("tower", "clip"))
    model.train()
    batch = mixed_batch(model)
    if num_items_in_batch is not None:
        batch["num_items_in_batch"] = torch.tensor(num_items_in_batch)
    full, full_grads, full_head_calls = loss_and_gradients(model, False, **batch)
    fused, fused_grads, _ = loss_and_gradients(model, True, **batch)  # the first also checks the LM, once
    _, _, fused_head_calls = loss_and_gradients(model, True, **batch)
    assert full.logits is not None and full_head_calls == 1
    assert fused.logits is None and fused_head_calls == 0  # the head's weights were used, never its forward
    assert torch.allclose(fused.loss, full.loss, **TOLERANCE)
    assert sorted(fused_grads) == sorted(full_grads)
    head = model.language_model.get_output_embeddings()
    assert any(param.grad is not None for param in head.parameters())
    assert any(name.startswith("multi_modal_projector") for name in fused_grads)
    for name, grad in full_grads.items():
        assert torch.allclose(fused_grads[name], grad, **TOLERANCE), (name, (fused_grads[name] - grad).abs().max())


def test_eval_and_forwards_without_labels_keep_their_logits(checkpoints):
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    batch = mixed_batch(model)
    assert not model.config.fused_loss  # opt-in for the library; mvlm.train turns it on (--fused_loss)
    model.config.fused_loss = True
    assert model.train()(**batch).logits is None
    evaluated = model.eval()(**batch)
    assert evaluated.logits is not None and torch.isfinite(evaluated.loss)
    unlabelled = {key: value for key, value in batch.items() if key != "labels"}
    assert model.train()(**unlabelled).logits is not None


def test_an_lm_that_scales_its_logits_trains_with_its_own_loss_and_says_why_once(checkpoints, caplog):
    """Cohere multiplies its logits by a scale after the head: the fused loss would be wrong, so it is not used."""
    model, _, _ = build_model(checkpoints("llm", "cohere"), checkpoints("tower", "clip"))
    model.train()
    batch = mixed_batch(model)
    full, full_grads, _ = loss_and_gradients(model, False, **batch)
    with caplog.at_level(logging.WARNING, logger="mvlm.model.fused_forward"):
        fused, fused_grads, _ = loss_and_gradients(model, True, **batch)
        loss_and_gradients(model, True, **batch)
    assert fused.logits is not None and torch.equal(fused.loss, full.loss)
    reasons = [record.message for record in caplog.records if "fused loss off" in record.message]
    assert len(reasons) == 1 and "CohereForCausalLM" in reasons[0] and "logits differ" in reasons[0]


def train_flags(checkpoints, data_path, image_folder, output_dir, fused: bool) -> list[str]:
    return [
        "--model_name_or_path", checkpoints("llm", "qwen2"), "--vision_tower", checkpoints("tower", "clip"),
        "--data_path", data_path, "--image_folder", image_folder, "--output_dir", output_dir,
        "--version", "vicuna_v1", "--unfreeze_mm_vision_tower", "True",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_steps", "3",
        "--learning_rate", "1e-3", "--report_to", "none", "--logging_steps", "1", "--save_strategy", "no",
        "--dataloader_num_workers", "0", "--use_cpu", "True", "--fused_loss", str(fused),
    ]


def test_trainer_runs_with_and_without_the_fused_loss_agree_step_by_step(checkpoints, tmp_path):
    """Gradient accumulation makes Trainer pass num_items_in_batch: the fused loss must divide as the LM does."""
    data = synthetic.write_dataset(str(tmp_path), 12, seed=5, kind="qa", text_only_every=3)
    runs = {fused: main(train_flags(checkpoints, data, str(tmp_path), str(tmp_path / f"fused-{fused}"), fused))
            for fused in (False, True)}
    losses = {fused: [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
              for fused, trainer in runs.items()}
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], abs=1e-5, rel=1e-5)
    full_state, fused_state = (runs[fused].model.state_dict() for fused in (False, True))
    for name, tensor in full_state.items():
        assert torch.allclose(fused_state[name], tensor, **TOLERANCE), name
    assert runs[True].model.config.fused_loss and not runs[False].model.config.fused_loss


def test_dropout_does_not_turn_the_fused_loss_off(checkpoints, caplog):
    """Phi-2 trains with dropout: the one-time check must compare like with like, not fall back."""
    model, _, _ = build_model(checkpoints("llm", "phi"), checkpoints("tower", "clip"))
    dropouts = [module for module in model.language_model.modules() if isinstance(module, torch.nn.Dropout)]
    assert dropouts
    for module in dropouts:
        module.p = 0.3
    model.train()
    batch = mixed_batch(model)
    with caplog.at_level(logging.WARNING, logger="mvlm.model.fused_forward"):
        torch.manual_seed(7)
        fused, _, _ = loss_and_gradients(model, True, **batch)
    torch.manual_seed(7)
    full, _, _ = loss_and_gradients(model, False, **batch)
    assert fused.logits is None and not [record for record in caplog.records if "fused loss off" in record.message]
    assert torch.allclose(fused.loss, full.loss, **TOLERANCE)  # the probe left the dropout stream as it was
