"""--packing: rows of several samples whose loss equals the unpacked batch's."""

import pytest
import torch

from mvlm.constants import IGNORE_INDEX
from mvlm.data.dataset import DataConfig, LazySupervisedDataset, SupervisedCollator
from mvlm.data.formats import load_samples
from mvlm.data.packing import pack_rows, packed_tensors
from mvlm.model.builder import build_model
from mvlm.train.train import main
from test_train import common_flags, data  # noqa: F401  (data is a fixture)


def test_pack_rows_is_first_fit_in_order():
    assert pack_rows([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    assert pack_rows([6, 3, 2, 8], 8) == [[0, 2], [1], [3]]
    with pytest.raises(ValueError, match="9 tokens cannot be packed into rows of 8"):
        pack_rows([9], 8)


def test_packed_tensors_restart_positions_and_ignore_each_first_label():
    first = {"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([IGNORE_INDEX, 2, 3])}
    second = {"input_ids": torch.tensor([4, 5]), "labels": torch.tensor([4, 5])}
    third = {"input_ids": torch.tensor([6]), "labels": torch.tensor([6])}
    batch = packed_tensors([[first, second], [third]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5], [IGNORE_INDEX] * 5]


@pytest.mark.parametrize("family", ["llama", "phi", "phi3", "gemma", "qwen2"])
def test_packed_loss_equals_unpacked_loss(checkpoints, data, family):  # noqa: F811
    model, tokenizer, image_processor = build_model(checkpoints("llm", family), checkpoints("tower", "clip"),
                                                    attn_implementation="sdpa")
    model.eval()
    template = {"phi": "phi", "phi3": "phi3_chat", "gemma": "gemma", "qwen2": "chatml_direct"}.get(family, "vicuna_v1")
    dataset = LazySupervisedDataset(load_samples(data["qa"]), tokenizer, image_processor,
                                    DataConfig(template=template, num_image_tokens=model.num_image_tokens,
                                               image_folder=data["folder"]))
    features = [dataset[index] for index in range(8)]  # images and text-only samples (every 5th)
    assert any(feature["pixel_values"] is None for feature in features)
    longest = max(len(feature["input_ids"]) for feature in features)
    pack_to = 3 * longest
    order = [index for row in pack_rows([len(f["input_ids"]) for f in features], pack_to) for index in row]
    unpacked = SupervisedCollator(tokenizer.pad_token_id)([features[index] for index in order])
    packed = SupervisedCollator(tokenizer.pad_token_id, pack_to=pack_to)(features)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < len(features)

    def predictions(batch):
        """Loss, and the logits that predict each target token, in sample order."""
        output = model(**batch)
        return output.loss.item(), output.logits[:, :-1][batch["labels"][:, 1:] != IGNORE_INDEX]

    with torch.no_grad():
        expected_loss, expected_logits = predictions(unpacked)
        loss, logits = predictions(packed)
        assert loss == pytest.approx(expected_loss, abs=1e-5)
        assert torch.allclose(logits, expected_logits, atol=1e-5)
        # The same rows with positions that do not restart let samples see each other: other predictions.
        leaking = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]))
        assert (predictions(leaking)[1] - expected_logits).abs().max() > 1e-3


def test_training_with_packing_runs_and_learns(checkpoints, data, tmp_path):  # noqa: F811
    trainer = main(common_flags(checkpoints, data["qa"], data["folder"], str(tmp_path / "packed"),
                                "--version", "vicuna_v1", "--packing", "True", "--model_max_length", "256",
                                "--max_steps", "6", "--learning_rate", "5e-3", "--save_strategy", "no"))
    assert trainer.data_collator.pack_to == 256
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
