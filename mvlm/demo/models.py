"""The demo's starting checkpoints, made from scratch: a tokenizer trained on the corpus, a tiny Llama-style
LM and a tiny CLIP-style vision tower, both randomly initialised and saved as ordinary HuggingFace folders,
the way a user would have downloaded ones. `train_tokenizer` also serves the test suite's tiny models.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)


def train_tokenizer(
    kind: str, with_bos: bool, corpus: Iterable[str], vocab_size: int, split_punctuation: bool = False
) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on `corpus`: 'sentencepiece' (Metaspace, byte fallback, like Llama's) or
    'bytelevel' (GPT-2's / Qwen's). With `with_bos`, encoding puts BOS first, as Llama's tokenizer does.

    `split_punctuation` (sentencepiece only) keeps punctuation apart from words ("circle?" -> "▁circle",
    "?"), as a tokenizer trained on a large corpus ends up doing; trained on a small corpus, BPE would
    otherwise merge "circle?" into a token of its own, unrelated to "circle".
    """
    if kind == "sentencepiece":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        if split_punctuation:
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence([tokenizer.pre_tokenizer, pre_tokenizers.Punctuation()])
        tokenizer.decoder = decoders.Sequence(
            [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
        )
        specials = ["<unk>", "<s>", "</s>"]
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, show_progress=False,
            special_tokens=specials + [f"<0x{byte:02X}>" for byte in range(256)],
        )
        bos, eos, unk = "<s>", "</s>", "<unk>"
    elif kind == "bytelevel":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, show_progress=False, special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        bos, eos, unk = "<|endoftext|>", "<|endoftext|>", None
    else:
        raise ValueError(f"tokenizer kind must be 'sentencepiece' or 'bytelevel', got {kind!r}")
    tokenizer.train_from_iterator(corpus, trainer)
    if with_bos:
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, unk_token=unk)


@dataclasses.dataclass(frozen=True)
class LanguageModelSize:
    hidden_size: int = 192
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 512
    initializer_range: float = 0.07
    """About 1/sqrt(hidden_size): Llama's 0.02 suits 4096-wide models; so narrow a model learns slowly with it."""


@dataclasses.dataclass(frozen=True)
class VisionTowerSize:
    image_size: int = 48
    patch_size: int = 16
    hidden_size: int = 128
    num_hidden_layers: int = 1
    num_attention_heads: int = 4
    intermediate_size: int = 256
    position_embedding_std: float = 0.5


def save_language_model(
    folder: str, corpus: Iterable[str], size: LanguageModelSize = LanguageModelSize(), seed: int = 0,
    vocab_size: int = 512, control_tokens: Sequence[str] = (),
) -> str:
    """A random Llama-style causal LM and a Llama-like tokenizer trained on `corpus`, saved to `folder`.

    `control_tokens` (e.g. a chat template's "[INST]", "[/INST]") become single special tokens, as they
    are in the tokenizers of the LLMs whose templates they belong to.
    """
    tokenizer = train_tokenizer("sentencepiece", True, corpus, vocab_size, split_punctuation=True)
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in control_tokens],
                         special_tokens=True)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=size.initializer_range,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_vision_tower(folder: str, size: VisionTowerSize = VisionTowerSize(), seed: int = 0) -> str:
    """A random CLIP-style vision tower and its image processor, saved to `folder`.

    CLIP initialises position embeddings with std 0.02, tiny next to the patch content; here they get
    `position_embedding_std` (0.5: about the size of the patch content's share), so that a patch's
    feature also says where the patch is: the LM's rotary positions never reach a token's value vector,
    and "Where is the circle?" needs the place of the token it finds.
    """
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        image_size=size.image_size,
        patch_size=size.patch_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
    )
    tower = CLIPVisionModel(config)
    with torch.no_grad():
        tower.embeddings.position_embedding.weight.normal_(std=size.position_embedding_std)
    tower.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": size.image_size}, crop_size={"height": size.image_size, "width": size.image_size}
    ).save_pretrained(folder)
    return folder
