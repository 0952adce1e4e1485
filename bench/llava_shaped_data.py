"""LLaVA-shaped training data for the benchmarks: what a stage-2 batch of LLaVA-1.5's mix665k looks like.

Two thirds of the samples are image conversations, one third text-only, in random order; each has one to
three turns of varied length (short VQA answers beside long descriptions). Lengths are in words and scale
with the image: at 576 image tokens (CLIP-L/336) a question runs 4-30 words and an answer 1-120, as in the
mix, and a smaller tower gets proportionally shorter text so that the image/text balance stays the same.
Written in LLaVA's json format with real image files, so the benchmark goes through mvlm's own dataset.
"""

from __future__ import annotations

import json
import os
import random

from PIL import Image

WORDS = (
    "the a an image picture photo shows there is are of in on at with and to what where which how many color "
    "left right top bottom center red green blue yellow black white man woman dog cat car tree sky table cup "
    "person sitting standing holding wearing small large two three four sign street building window water "
    "describe detail answer question briefly one word phrase yes no because also near behind front next"
).split()
"""The vocabulary of the synthetic text (and of the benchmark's tokenizer)."""

LLAVA_IMAGE_TOKENS = 576


def corpus(lines: int = 2000, seed: int = 0) -> list[str]:
    """Random sentences over WORDS, to train the benchmark's tokenizer on."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(lines)]


def _text(rng: random.Random, low: int, high: int, scale: float) -> str:
    count = max(1, round(rng.randint(low, high) * scale))
    return " ".join(rng.choice(WORDS) for _ in range(count)).capitalize() + "."


def _conversation(rng: random.Random, with_image: bool, scale: float) -> list[dict[str, str]]:
    turns = []
    for index in range(rng.randint(1, 3)):
        question = _text(rng, 4, 30, scale)
        if with_image and index == 0:
            question = "<image>\n" + question
        answer = _text(rng, 1, 8, scale) if rng.random() < 0.5 else _text(rng, 20, 120, scale)
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    if not with_image:  # text-only samples of the mix (ShareGPT) run longer
        turns[-1]["value"] = _text(rng, 60, 200, scale)
    return turns


def write_llava_shaped_dataset(folder: str, count: int, image_tokens: int, image_size: int, seed: int = 0) -> str:
    """`count` samples under `folder` (json + images); returns the json path."""
    rng = random.Random(seed)
    scale = image_tokens / LLAVA_IMAGE_TOKENS
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    images = []
    for index in range(16):  # a few distinct images: decoding time is not what is measured
        name = f"images/{index}.png"
        color = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (image_size, image_size), color).save(os.path.join(folder, name))
        images.append(name)
    samples = []
    for index in range(count):
        with_image = rng.random() < 2 / 3
        sample = {"id": f"bench-{index}", "conversations": _conversation(rng, with_image, scale)}
        if with_image:
            sample["image"] = rng.choice(images)
        samples.append(sample)
    path = os.path.join(folder, "llava_shaped.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(samples, handle)
    return path
