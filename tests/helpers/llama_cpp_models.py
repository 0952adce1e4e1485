"""Tiny LLaVA checkpoints trained to answer, for tests/test_to_gguf.py: the three recipes llama.cpp users run.

- `llama-clip`: a Llama with a CLIP tower, as LLaVA-1.5 and mvlm's demo (mistral_instruct template).
- `phi3-clip`: a Phi-3 with a CLIP tower and XTuner's phi3_chat template (LLaVA-Phi-3-mini); its tokenizer
  has Phi-3's special tokens, `<|user|>` `<|assistant|>` `<|end|>` stripping the whitespace after them.
- `phi2-siglip`: a Phi-2 (biased head, a quarter of each head rotated, feed-forward 4x wide as Phi-2's)
  with a SigLIP tower and the phi template, as Mipha-3B.

Each is trained for a few hundred steps on the demo's coloured-shapes questions (mvlm.demo.data), so its
greedy answers are short, mostly right and depend on the image: a comparison of two runtimes then
compares answers that mean something. Sizes are the smallest that learn in seconds on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random

import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    Phi3Config,
    PhiConfig,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers import AutoModelForCausalLM

from mvlm.constants import IGNORE_INDEX
from mvlm.conversation import get_conversation
from mvlm.data.images import process_images
from mvlm.data.tokenize import tokenize_sample
from mvlm.demo.data import IMAGE_SIZE, DemoData, write_demo_data
from mvlm.demo.models import train_tokenizer
from mvlm.model.builder import build_model, save_checkpoint

HIDDEN = 64
PATCH = 16  # the demo's grid cells: one patch per cell


@dataclasses.dataclass(frozen=True)
class Recipe:
    llm: str
    tower: str
    conv_mode: str
    control_tokens: tuple[str, ...] = ()
    stripped_tokens: tuple[str, ...] = ()
    """Special tokens that swallow the whitespace after them (rstrip), as Phi-3's role tokens do."""


RECIPES = {
    "llama-clip": Recipe("llama", "clip", "mistral_instruct", control_tokens=("[INST]", "[/INST]")),
    "phi3-clip": Recipe("phi3", "clip", "phi3_chat", control_tokens=("<|endoftext|>", "<|system|>"),
                        stripped_tokens=("<|user|>", "<|assistant|>", "<|end|>")),
    "phi2-siglip": Recipe("phi", "siglip", "phi"),
}


def demo_data(folder: str, train_images: int = 1500, test_per_category: int = 6) -> DemoData:
    """The demo's task, one question per training image, and test_per_category x 5 held-out questions."""
    return write_demo_data(folder, train_images, 0, test_per_category, seed=0, max_turns=1, text_only_fraction=0.0)


def _tokenizer(recipe: Recipe, data: DemoData):
    corpus = data.corpus() + [get_conversation(recipe.conv_mode).system] * 20
    if recipe.llm == "phi":
        return train_tokenizer("bytelevel", False, corpus, 400)
    tokenizer = train_tokenizer("sentencepiece", True, corpus, 400, split_punctuation=True)
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in recipe.control_tokens]
                         + [AddedToken(token, special=True, normalized=False, rstrip=True)
                            for token in recipe.stripped_tokens], special_tokens=True)
    return tokenizer


def _llm_config(recipe: Recipe, tokenizer) -> object:
    common = dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, initializer_range=0.1)
    if recipe.llm == "llama":
        return LlamaConfig(intermediate_size=2 * HIDDEN, num_key_value_heads=2, tie_word_embeddings=True, **common)
    if recipe.llm == "phi3":
        return Phi3Config(intermediate_size=2 * HIDDEN, num_key_value_heads=4, pad_token_id=0, **common)
    return PhiConfig(intermediate_size=4 * HIDDEN, partial_rotary_factor=0.5, **common)


def save_base_models(recipe: Recipe, data: DemoData, folder: str, seed: int = 0) -> tuple[str, str]:
    """The untrained LLM (with its tokenizer) and tower (with its image processor): (llm folder, tower folder)."""
    torch.manual_seed(seed)
    tokenizer = _tokenizer(recipe, data)
    llm = AutoModelForCausalLM.from_config(_llm_config(recipe, tokenizer))
    if recipe.llm == "phi":
        torch.nn.init.normal_(llm.lm_head.bias, std=0.5)  # Phi-2's head has a bias: make it matter
    llm_folder, tower_folder = os.path.join(folder, "llm"), os.path.join(folder, "tower")
    llm.save_pretrained(llm_folder)
    tokenizer.save_pretrained(llm_folder)
    tower_config = dict(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                        num_hidden_layers=2, num_attention_heads=4)
    if recipe.tower == "clip":
        tower = CLIPVisionModel(CLIPVisionConfig(**tower_config))
        processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                          crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    else:
        tower = SiglipVisionModel(SiglipVisionConfig(**tower_config))
        processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    with torch.no_grad():  # position embeddings as strong as the patches', as the demo's tower has them
        tower.embeddings.position_embedding.weight.normal_(std=0.5)
    tower.save_pretrained(tower_folder)
    processor.save_pretrained(tower_folder)
    return llm_folder, tower_folder


def train_checkpoint(name: str, data: DemoData, folder: str, steps: int = 300, batch_size: int = 32,
                     learning_rate: float = 2e-3, seed: int = 0) -> str:
    """Build the recipe's model, train projector and LLM (tower frozen, as LLaVA's stage 2) on the demo's
    questions, save it as an mvlm checkpoint in folder/checkpoint; returns that folder."""
    recipe = RECIPES[name]
    llm_folder, tower_folder = save_base_models(recipe, data, folder, seed)
    model, tokenizer, image_processor = build_model(llm_folder, tower_folder)
    model.config.conv_mode = recipe.conv_mode
    with open(data.instruct, encoding="utf-8") as handle:
        samples = [sample for sample in json.load(handle) if "image" in sample]
    encoded = [tokenize_sample(sample, tokenizer, recipe.conv_mode, model.num_image_tokens) for sample in samples]
    pixels = process_images([Image.open(os.path.join(data.folder, sample["image"])).convert("RGB")
                             for sample in samples], image_processor, model.config.image_aspect_ratio)
    model.vision_tower.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        rows = rng.sample(range(len(encoded)), batch_size)
        length = max(len(encoded[row]["input_ids"]) for row in rows)
        input_ids = torch.full((batch_size, length), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        for index, row in enumerate(rows):
            size = len(encoded[row]["input_ids"])
            input_ids[index, :size] = encoded[row]["input_ids"]
            labels[index, :size] = encoded[row]["labels"]
            attention_mask[index, :size] = 1
        loss = model(input_ids=input_ids, pixel_values=pixels[rows], attention_mask=attention_mask,
                     labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    checkpoint = os.path.join(folder, "checkpoint")
    save_checkpoint(checkpoint, model, tokenizer, image_processor)
    return checkpoint
