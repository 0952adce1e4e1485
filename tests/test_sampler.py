"""--group_by_modality_length: every batch one modality, similar lengths, every sample once per epoch."""

import random

import torch

from mvlm.data.dataset import DataConfig, LazySupervisedDataset
from mvlm.data.formats import load_samples
from mvlm.model.builder import build_model
from mvlm.train.sampler import ModalityLengthGroupedSampler, modality_grouped_indices
from tests.helpers import synthetic


def batches_of(order, batch_size):
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def test_batches_hold_one_modality_and_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.randint(600, 700) for _ in range(40)] + [-rng.randint(10, 400) for _ in range(24)]
    order = modality_grouped_indices(lengths, 8, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    batches = batches_of(order, 8)
    assert all(len({lengths[index] > 0 for index in batch}) == 1 for batch in batches)
    # Within a mega-batch samples are sorted by length: a text batch spans far less than all text samples do.
    text_batches = [batch for batch in batches if lengths[batch[0]] < 0]
    spans = [max(-lengths[i] for i in batch) - min(-lengths[i] for i in batch) for batch in text_batches]
    assert max(spans) < 0.5 * (max(-length for length in lengths if length < 0) - min(-length for length in lengths
                                                                                        if length < 0))
    # Both modalities are interleaved, not one after the other.
    kinds = [lengths[batch[0]] > 0 for batch in batches if len(batch) == 8]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)


def test_one_modality_only_is_plain_length_grouping():
    for lengths in ([5, 9, 7, 3, 8, 6], [-5, -9, -7, -3, -8, -6]):
        order = modality_grouped_indices(lengths, 3, torch.Generator().manual_seed(1))
        assert sorted(order) == list(range(6))
        assert sorted(sorted(abs(lengths[i]) for i in batch) for batch in batches_of(order, 3)) == [[3, 5, 6], [7, 8, 9]]


def test_each_epoch_is_a_new_permutation_of_every_sample():
    sampler = ModalityLengthGroupedSampler([10, -3, 12, -4, 11, -5, 9, -6], batch_size=2, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == sorted(second) == list(range(8)) and first != second
    sampler.set_epoch(0)
    assert list(sampler) == first  # reproducible: resuming a run replays its order


def test_lengths_count_tokens_with_images_and_sign_the_modality(checkpoints, tmp_path):
    model, tokenizer, image_processor = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    path = synthetic.write_dataset(str(tmp_path), 10, seed=4, kind="qa", text_only_every=3)
    dataset = LazySupervisedDataset(load_samples(path), tokenizer, image_processor,
                                    DataConfig(conv_mode="vicuna_v1", num_image_tokens=model.num_image_tokens,
                                               image_folder=str(tmp_path)))
    for index, length in enumerate(dataset.modality_lengths):
        sample = dataset.samples[index]
        text = " ".join(turn["value"] for turn in sample["conversations"])
        text_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if "image" in sample:
            assert length == text_tokens + model.num_image_tokens
        else:
            assert length == -text_tokens
