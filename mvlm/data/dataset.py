"""The training dataset (lazy: images are opened and samples tokenized in the DataLoader workers),
modality lengths for grouping, and the collator.

A bad sample (missing or corrupt image, wrong `<image>` count, malformed conversation, too long) stops
training at once with a report naming it, or, with `skip_bad_samples`, is replaced by the next good
sample; the indices of the skipped samples travel with the batch, so that the trainer counts each bad
sample once however often it is met (`python -m mvlm.data.check` finds them all up front).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from mvlm.constants import IGNORE_INDEX
from mvlm.data.formats import load_sample_images
from mvlm.data.images import ImageError, process_images
from mvlm.data.packing import packed_batch
from mvlm.data.tokenize import SampleError, sample_id, sample_images, tokenize_sample
from mvlm.errors import DataError

SKIPPED_KEY = "skipped_sample_indices"


class BadSampleError(DataError):
    """Training met a sample it cannot use; the message is the report to show the user."""


@dataclasses.dataclass
class DataConfig:
    """How samples become model inputs; mirrors the data flags of `mvlm.train.arguments`."""

    conv_mode: str
    """The chat template's name (training's `--version`)."""
    num_image_tokens: int
    image_folder: str | None = None
    image_aspect_ratio: str = "pad"
    image_grid_pinpoints: Any = None
    max_length: int | None = None
    skip_bad_samples: bool = False


class LazySupervisedDataset(Dataset):
    """LLaVA samples -> {"input_ids", "labels", "pixel_values" (or None)}, built when a worker asks."""

    def __init__(
        self,
        samples: Sequence[dict[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        config: DataConfig,
    ):
        self.samples = samples
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[int] = []
        while True:
            try:
                item = self.build(self.samples[index])
            except (SampleError, ImageError) as error:
                if not self.config.skip_bad_samples:
                    raise BadSampleError(
                        f"bad sample {sample_id(self.samples[index])} (index {index}): {error}\n"
                        "Check the whole dataset with `python -m mvlm.data.check --data_path ... --image_folder ...`, "
                        "or pass --skip_bad_samples to skip and count such samples."
                    ) from error
                skipped.append(index)
                if len(skipped) >= len(self.samples):
                    raise BadSampleError("every sample of the dataset is bad; see mvlm.data.check") from error
                index = (index + 1) % len(self.samples)
                continue
            item[SKIPPED_KEY] = skipped
            return item

    def build(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Tokenize one sample and preprocess its images (raises SampleError / ImageError)."""
        config = self.config
        images = load_sample_images(sample, config.image_folder)
        if not images:
            tokens = tokenize_sample(sample, self.tokenizer, config.conv_mode, config.num_image_tokens, config.max_length)
            return {"input_ids": tokens["input_ids"], "labels": tokens["labels"], "pixel_values": None}
        views = process_images(images, self.image_processor, config.image_aspect_ratio, config.image_grid_pinpoints)
        # One (views, 3, H, W) tensor per image: anyres images have several views, the other modes one.
        per_image = [image_views.reshape(-1, *image_views.shape[-3:]) for image_views in views]
        counts = [len(image_views) * config.num_image_tokens for image_views in per_image]
        tokens = tokenize_sample(sample, self.tokenizer, config.conv_mode, counts, config.max_length)
        kept = per_image[: tokens["num_images"]]
        pixel_values = torch.cat(kept) if kept else None
        return {"input_ids": tokens["input_ids"], "labels": tokens["labels"], "pixel_values": pixel_values}

    @property
    def modality_lengths(self) -> list[int]:
        """Length in tokens of each sample, negative for text-only ones (LLaVA's convention for grouping).

        Text is counted with the tokenizer (all samples in one batched call); images as
        `num_image_tokens` each, without opening them. Malformed turns count as empty here: the sample
        is reported (or skipped) when it is built, not at start-up with a traceback.
        """
        if self._lengths is None:
            texts = [" ".join(_turn_texts(sample)) for sample in self.samples]
            text_lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            self._lengths = [
                length + len(sample_images(sample)) * self.config.num_image_tokens if sample_images(sample) else -length
                for length, sample in zip(text_lengths, self.samples)
            ]
        return self._lengths


def _turn_texts(sample: dict[str, Any]) -> list[str]:
    turns = sample.get("conversations")
    if not isinstance(turns, list):
        return []
    return [turn["value"] for turn in turns if isinstance(turn, dict) and isinstance(turn.get("value"), str)]


@dataclasses.dataclass
class SupervisedCollator:
    """Right-pads a batch; the attention mask comes from the true lengths (pad may equal EOS).

    With `packing` (--packing) the whole batch becomes one row without padding, with the samples'
    boundaries instead of an attention mask (see `mvlm.data.packing`).
    """

    pad_token_id: int
    packing: bool = False

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = packed_batch(features) if self.packing else self._padded(features)
        pixel_values = [feature["pixel_values"] for feature in features if feature["pixel_values"] is not None]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)
        skipped = [index for feature in features for index in feature.get(SKIPPED_KEY, ())]
        if skipped:
            batch[SKIPPED_KEY] = torch.tensor(skipped)
        return batch

    def _padded(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = pad_sequence([feature["input_ids"] for feature in features], batch_first=True,
                                 padding_value=self.pad_token_id)
        labels = pad_sequence([feature["labels"] for feature in features], batch_first=True,
                              padding_value=IGNORE_INDEX)
        lengths = torch.tensor([len(feature["input_ids"]) for feature in features])
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
