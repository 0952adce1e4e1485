"""The demo's synthetic task: coloured shapes on a 3x3 grid, with captions, questions and a held-out test.

Each image is a 3x3 grid of cells, one vision-tower patch per cell; a cell is empty or holds one shape
(circle, square, triangle) in one colour. So each image token carries one cell's content and, through
the tower's position embedding, the cell's place, and the questions (colour, shape, count, position,
yes/no) are answerable from the tokens alone. Everything is drawn from one seed, so two runs write the
same files. Output, in LLaVA's formats:

    images/<split>-<n>.png   the scenes
    captions.json            stage 1: "<image>" -> "a red circle top left, a blue square center"
    instruct.json            stage 2: one to three question turns per image, plus text-only samples
    test_questions.jsonl     held out: {question_id, image, text, category} (mvlm.eval.model_vqa's input)
    test_answers.jsonl       held out: {question_id, answer, category} (mvlm.eval.score exact's labels)
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Callable

from PIL import Image, ImageDraw

GRID = 3
CELL = 16
IMAGE_SIZE = GRID * CELL
BACKGROUND = (255, 255, 255)
COLORS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215), "yellow": (225, 195, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
MAX_OBJECTS = 4
COUNT_WORDS = tuple(str(number) for number in range(1, MAX_OBJECTS + 1))
CATEGORIES = ("color", "shape", "count", "position", "yes/no")
CHANCE = {  # one over the number of possible answers: what guessing uniformly scores
    "color": 1 / len(COLORS),
    "shape": 1 / len(SHAPES),
    "count": 1 / MAX_OBJECTS,
    "position": 1 / len(POSITIONS),
    "yes/no": 1 / 2,
}
TEXT_ONLY = (  # questions without an image, so that stage 2 also sees text-only samples
    ("What colors can a shape have?", "red, green, blue or yellow"),
    ("Which shapes can appear?", "circle, square or triangle"),
    ("How many cells does the grid have?", "9"),
    ("What is the middle cell called?", "center"),
    ("Name the four corners.", "top left, top right, bottom left, bottom right"),
)


@dataclasses.dataclass(frozen=True)
class Shape:
    cell: int  # 0..8, row by row from the top left
    shape: str
    color: str

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


Scene = tuple[Shape, ...]


def random_scene(rng: random.Random) -> Scene:
    """One to MAX_OBJECTS shapes in distinct cells, kind and colour drawn independently, in cell order."""
    count = rng.randint(1, MAX_OBJECTS)
    cells = sorted(rng.sample(range(GRID * GRID), count))
    return tuple(Shape(cell, rng.choice(SHAPES), rng.choice(sorted(COLORS))) for cell in cells)


def draw_scene(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene as an IMAGE_SIZE-pixel RGB image; each shape centred in its cell, its size and shade varying
    a little (the patch's pixels then differ mostly by shape and colour, which a random tower keeps apart)."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for item in scene:
        size = rng.randint(11, 14)
        left = (item.cell % GRID) * CELL + (CELL - size) // 2
        top = (item.cell // GRID) * CELL + (CELL - size) // 2
        fill = tuple(max(0, min(255, channel + rng.randint(-20, 20))) for channel in COLORS[item.color])
        box = (left, top, left + size - 1, top + size - 1)
        if item.shape == "circle":
            pen.ellipse(box, fill=fill)
        elif item.shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(left + size / 2, top), (left, top + size - 1), (left + size - 1, top + size - 1)], fill=fill)
    return image


def caption(scene: Scene) -> str:
    return ", ".join(f"a {item.color} {item.shape} {item.position}" for item in scene)


def _unique(scene: Scene, key: Callable[[Shape], object]) -> list[Shape]:
    """The shapes of the scene that no other shape matches on `key` (so a question can name them by it)."""
    values = [key(item) for item in scene]
    return [item for item, value in zip(scene, values) if values.count(value) == 1]


def ask(category: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """A (question, answer) of `category` about the scene, or None when the scene cannot answer it unambiguously.

    Every question names one attribute (a shape or a colour) and asks about the shape that has it, or
    whether one has it: the model looks one thing up in the image, which a tiny model learns quickly.
    """
    if category == "color":
        candidates = _unique(scene, lambda item: item.shape)
        if not candidates:
            return None
        item = rng.choice(candidates)
        return f"What color is the {item.shape}?", item.color
    if category == "shape":
        candidates = _unique(scene, lambda item: item.color)
        if not candidates:
            return None
        item = rng.choice(candidates)
        return f"What shape is the {item.color} one?", item.shape
    if category == "count":
        return "How many shapes are there?", str(len(scene))
    if category == "position":
        by_shape, by_color = _unique(scene, lambda item: item.shape), _unique(scene, lambda item: item.color)
        if not by_shape and not by_color:
            return None
        if by_shape and (not by_color or rng.random() < 0.5):
            item = rng.choice(by_shape)
            return f"Where is the {item.shape}?", item.position
        item = rng.choice(by_color)
        return f"Where is the {item.color} one?", item.position
    if category == "yes/no":
        present = {item.shape for item in scene} | {item.color for item in scene}
        wanted = rng.random() < 0.5
        if rng.random() < 0.5:
            options = [shape for shape in SHAPES if (shape in present) == wanted]
            phrase = "a {}"
        else:
            options = [color for color in sorted(COLORS) if (color in present) == wanted]
            phrase = "a {} one"
        if not options:
            return None
        return f"Is there {phrase.format(rng.choice(options))}?", "yes" if wanted else "no"
    raise ValueError(f"unknown question category {category!r}; known: {', '.join(CATEGORIES)}")


def ask_category(category: str, rng: random.Random) -> tuple[Scene, str, str]:
    """A fresh scene and a question of `category` about it (scenes that cannot answer it are redrawn)."""
    while True:
        scene = random_scene(rng)
        qa = ask(category, scene, rng)
        if qa is not None:
            return scene, *qa


def _save(folder: str, name: str, scene: Scene, rng: random.Random) -> str:
    relative = f"images/{name}.png"
    draw_scene(scene, rng).save(os.path.join(folder, relative))
    return relative


def _write_json(path: str, data: object) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)


def _write_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


@dataclasses.dataclass(frozen=True)
class DemoData:
    folder: str
    captions: str
    instruct: str
    test_questions: str
    test_answers: str

    def corpus(self) -> list[str]:
        """Every text of the training files, `<image>` tags left out: what the demo's tokenizer is trained on."""
        texts = []
        for path in (self.captions, self.instruct):
            with open(path, encoding="utf-8") as handle:
                texts += [turn["value"].replace("<image>", "") for sample in json.load(handle)
                          for turn in sample["conversations"]]
        return texts


def write_demo_data(
    folder: str, train_images: int, caption_images: int, test_per_category: int, seed: int = 0,
    max_turns: int = 3, describe_fraction: float = 0.0, text_only_fraction: float = 0.03,
) -> DemoData:
    """Write the whole dataset under `folder` (see the module docstring); returns its paths.

    Each stage-2 image gets a question of a category taken in turn (so every category is equally
    common) and up to `max_turns - 1` follow-up questions of other categories; a `describe_fraction`
    of them is asked for a description (the caption) instead. The test set asks `test_per_category`
    questions of each category about new images; a test question that stage 2 asked about the same
    scene is redrawn, so none was seen in training.
    """
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)

    captions = []
    for index in range(caption_images):
        scene = random_scene(rng)
        image = _save(folder, f"caption-{index}", scene, rng)
        captions.append({"id": f"caption-{index}", "image": image, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": caption(scene)}]})

    instruct, seen = [], set()
    for index in range(train_images):
        if rng.random() < describe_fraction:
            scene = random_scene(rng)
            turns = [("Describe the image.", caption(scene))]
        else:
            first = CATEGORIES[index % len(CATEGORIES)]
            scene, question, answer = ask_category(first, rng)
            turns = [(question, answer)]
            others = [category for category in CATEGORIES if category != first]
            for category in rng.sample(others, rng.randint(0, min(max_turns, len(CATEGORIES)) - 1)):
                qa = ask(category, scene, rng)
                if qa is not None:
                    turns.append(qa)
        seen.update((scene, question) for question, _ in turns)
        conversation = []
        for number, (question, answer) in enumerate(turns):
            conversation += [{"from": "human", "value": ("<image>\n" if number == 0 else "") + question},
                             {"from": "gpt", "value": answer}]
        image = _save(folder, f"train-{index}", scene, rng)
        instruct.append({"id": f"train-{index}", "image": image, "conversations": conversation})
    for index in range(round(train_images * text_only_fraction)):
        question, answer = TEXT_ONLY[index % len(TEXT_ONLY)]
        instruct.append({"id": f"text-{index}", "conversations": [
            {"from": "human", "value": question}, {"from": "gpt", "value": answer}]})
    rng.shuffle(instruct)

    questions, answers = [], []
    for category in CATEGORIES:
        for _ in range(test_per_category):
            scene, question, answer = ask_category(category, rng)
            while (scene, question) in seen:
                scene, question, answer = ask_category(category, rng)
            question_id = len(questions)
            image = _save(folder, f"test-{question_id}", scene, rng)
            questions.append({"question_id": question_id, "image": image, "text": question, "category": category})
            answers.append({"question_id": question_id, "answer": answer, "category": category})

    data = DemoData(
        folder=folder,
        captions=os.path.join(folder, "captions.json"),
        instruct=os.path.join(folder, "instruct.json"),
        test_questions=os.path.join(folder, "test_questions.jsonl"),
        test_answers=os.path.join(folder, "test_answers.jsonl"),
    )
    _write_json(data.captions, captions)
    _write_json(data.instruct, instruct)
    _write_jsonl(data.test_questions, questions)
    _write_jsonl(data.test_answers, answers)
    return data
