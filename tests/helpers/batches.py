"""Fixed model inputs for tests that compare models: a batch of image + text, and the logits on it."""

from __future__ import annotations

import torch

from mvlm.constants import IGNORE_INDEX
from tests.helpers import tiny


def make_batch(model, tokenizer, num_images=1, text=(5, 6, 7, 8)):
    """input_ids [BOS?] + image block(s) + text, labels on the text, random pixels."""
    n = model.num_image_tokens
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for _ in range(num_images):
        ids += [model.config.image_token_id] * n + [text[0]]
    ids += list(text)
    input_ids = torch.tensor([ids])
    labels = torch.where(input_ids == model.config.image_token_id, IGNORE_INDEX, input_ids)
    pixel_values = torch.randn(num_images, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    return input_ids, labels, pixel_values


def bare(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def logits_of(model, tokenizer, train_mode=False):
    """Logits on a fixed batch. `train_mode` for 4-bit models (with no dropout anywhere): bitsandbytes' CPU
    inference path, taken in eval mode, fails on layers narrower than 64 like the tiny model's."""
    torch.manual_seed(0)  # the same random image every call
    input_ids, _, pixel_values = make_batch(bare(model), tokenizer)
    model.train(train_mode)
    with torch.no_grad():
        return model(input_ids=input_ids, pixel_values=pixel_values).logits
