"""A small synthetic image-question task: coloured squares on a grey field, captions and questions."""

from __future__ import annotations

import json
import os
import random

from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
POSITIONS = {"left": (2, 9), "right": (16, 9)}


def make_image(color: str, position: str, size: int = 28) -> Image.Image:
    image = Image.new("RGB", (size, size), (128, 128, 128))
    left, top = POSITIONS[position]
    image.paste(Image.new("RGB", (10, 10), COLORS[color]), (left, top))
    return image


def write_dataset(folder: str, count: int, seed: int = 0, kind: str = "qa", text_only_every: int = 0) -> str:
    """Images under folder/images and a LLaVA json; returns the json path.

    kind 'caption': stage-1 samples ("<image>\\nDescribe." -> "a red square on the left");
    kind 'qa': "What color is the square?" -> "red". Every `text_only_every`-th sample has no image.
    """
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    samples = []
    for index in range(count):
        color, position = rng.choice(sorted(COLORS)), rng.choice(sorted(POSITIONS))
        name = f"images/{kind}-{seed}-{index}.png"
        if text_only_every and index % text_only_every == 0:
            samples.append({"id": f"{kind}-{index}", "conversations": [
                {"from": "human", "value": "Say yes."}, {"from": "gpt", "value": "yes"}]})
            continue
        make_image(color, position).save(os.path.join(folder, name))
        if kind == "caption":
            turns = [{"from": "human", "value": "<image>\nDescribe the image."},
                     {"from": "gpt", "value": f"a {color} square on the {position}"}]
        else:
            turns = [{"from": "human", "value": "<image>\nWhat color is the square?"}, {"from": "gpt", "value": color}]
        samples.append({"id": f"{kind}-{index}", "image": name, "conversations": turns})
    path = os.path.join(folder, f"{kind}-{seed}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(samples, handle)
    return path
