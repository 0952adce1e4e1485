"""Tiny random checkpoints for tests: tokenizers trained in-process, LLMs and vision towers from configs.

Everything is written as ordinary HuggingFace checkpoint folders, so the code under test loads them
exactly as it would load real ones; nothing comes from a hub.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CohereConfig,
    Gemma2Config,
    GemmaConfig,
    InternVLVisionConfig,
    InternVLVisionModel,
    LlamaConfig,
    Phi3Config,
    PhiConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from mvlm.demo import models as demo_models

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.\n",
    "USER: What is in the image? ASSISTANT: A cat. What color is it? Black. A red square on a blue field.\n",
    "Answer the questions. system user assistant The answer is A. Describe the picture briefly.\n",
    "You are a helpful language and vision assistant. 0 1 2 3 4 5 6 7 8 9 yes no left right top bottom\n",
]
IMAGE_SIZE = 28
PATCH_SIZE = 14
HIDDEN = 32


def train_tokenizer(kind: str, with_bos: bool) -> PreTrainedTokenizerFast:
    """A small BPE tokenizer: 'sentencepiece' (Metaspace, byte fallback, like Llama) or 'bytelevel' (GPT-2/Qwen)."""
    vocab_size = 600 if kind == "sentencepiece" else 500
    return demo_models.train_tokenizer(kind, with_bos, CORPUS * 20, vocab_size)


def train_word_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A 'wordlevel' (whole words, whitespace pre-tokenizer) or 'wordpiece' (BERT-style) tokenizer.

    transformers' stop-string matcher cannot read either vocabulary back as text; mvlm must still stop there.
    """
    specials = ["<unk>", "<s>", "</s>"]
    if kind == "wordlevel":
        tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=specials)
    elif kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
    else:
        raise ValueError(f"word tokenizer kind must be 'wordlevel' or 'wordpiece', got {kind!r}")
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def save_llama_with_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str, seed: int = 0) -> str:
    """Write a tiny random Llama whose vocabulary is `tokenizer`'s, with that tokenizer, to `folder`."""
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(llm_config("llama", len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def llm_config(family: str, vocab_size: int) -> object:
    """A two-layer config of each LLM family mvlm must support."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
    )
    if family == "llama":
        return LlamaConfig(num_key_value_heads=2, **common)
    if family == "phi":
        return PhiConfig(partial_rotary_factor=0.5, **common)
    if family == "phi3":
        return Phi3Config(num_key_value_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2, **common)
    if family == "gemma":
        return GemmaConfig(num_key_value_heads=1, head_dim=8, **common)
    if family == "qwen2":
        return Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **common)
    if family == "gemma2":  # soft-capping made strong enough to matter at this size
        return Gemma2Config(num_key_value_heads=1, head_dim=8, final_logit_softcapping=3.0, **common)
    if family == "cohere":  # scales its logits (by 1/16) after the head
        return CohereConfig(num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **common)
    raise ValueError(family)


# Which tokenizer each family gets: Llama/Phi-3/Gemma use SentencePiece with BOS, Phi-2/Qwen2 byte-level BPE.
FAMILY_TOKENIZER = {
    "llama": ("sentencepiece", True),
    "phi3": ("sentencepiece", True),
    "gemma": ("sentencepiece", True),
    "phi": ("bytelevel", False),
    "qwen2": ("bytelevel", False),
}
LLM_FAMILIES = tuple(FAMILY_TOKENIZER)
# Families only some tests build (the model tests run over LLM_FAMILIES): what the fused loss must handle.
EXTRA_FAMILY_TOKENIZER = {"gemma2": ("sentencepiece", True), "cohere": ("bytelevel", False)}


def save_llm(family: str, folder: str, seed: int = 0) -> str:
    """Write a tiny random causal LM of `family` with its tokenizer to `folder`."""
    tokenizer = train_tokenizer(*{**FAMILY_TOKENIZER, **EXTRA_FAMILY_TOKENIZER}[family])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(llm_config(family, len(tokenizer)))
    if family == "phi":
        assert model.lm_head.bias is not None  # the reason mvlm wraps the whole causal LM
        torch.nn.init.normal_(model.lm_head.bias, std=0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def vision_config(kind: str) -> object:
    common = dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
    if kind == "clip":
        return CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, **common)
    if kind == "siglip":
        return SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, **common)
    if kind == "internvit":
        return InternVLVisionConfig(image_size=[IMAGE_SIZE] * 2, patch_size=[PATCH_SIZE] * 2, **common)
    raise ValueError(kind)


VISION_KINDS = ("clip", "siglip", "internvit")


def save_vision_tower(kind: str, folder: str, seed: int = 0) -> str:
    """Write a tiny random tower; CLIP and SigLIP with their image processors, InternViT bare (none ships)."""
    torch.manual_seed(seed)
    config = vision_config(kind)
    if kind == "clip":
        CLIPVisionModel(config).save_pretrained(folder)
        CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ).save_pretrained(folder)
    elif kind == "siglip":
        SiglipVisionModel(config).save_pretrained(folder)
        SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    else:
        InternVLVisionModel(config).save_pretrained(folder)
    return folder


def save_full_clip(folder: str, seed: int = 0) -> str:
    """A whole CLIP (text + vision) checkpoint, as openai/clip-vit-large-patch14-336 is published."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2),
        vision_config=vision_config("clip").to_dict(),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(folder)
    return folder


def folder_in(root: str, name: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    return path
