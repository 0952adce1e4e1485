"""A checked chat request -> the model's prompt, rendered exactly as training and the chat CLI render it.

The messages become a LLaVA sample (`conversations` of human/gpt turns, one `<image>` tag per image in the
turn that sent it) and go through `mvlm.data.tokenize.conversation_from_sample`, the code that renders
training samples: each turn's images at its start, a system message in place of the template's own. The
prompt is then `mvlm.inference.encode_prompt`'s, so a greedy answer here equals the chat CLI's and the
benchmark runners' for the same question and image.

An mvlm model takes several images in one conversation (each `<image>` becomes its own run of image
tokens), but LLaVA-style checkpoints are trained with one; `max_images` (`--max-images`, default 1) says
how many a request may hold.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

from PIL import Image

from mvlm.constants import DEFAULT_IMAGE_TOKEN
from mvlm.conversation import Conversation
from mvlm.data.images import process_images
from mvlm.data.tokenize import conversation_from_sample
from mvlm.inference import EncodedPrompt, encode_prompt, new_conversation
from mvlm.loading import LoadedModel
from mvlm.serve.api_errors import invalid_request
from mvlm.serve.images import ImageLimits, open_image_url
from mvlm.serve.openai_schema import ChatMessage, ChatRequest

SAMPLE_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


@dataclasses.dataclass(frozen=True)
class PromptLimits:
    max_images: int
    """Images per conversation."""
    max_new_tokens: int
    """The most tokens one answer may ask for (`--max-new-tokens`)."""
    images: ImageLimits


@dataclasses.dataclass(frozen=True)
class PreparedChat:
    """What the engine needs from a request: its prompt, how many tokens it may add, where it stops."""

    prompt: EncodedPrompt
    max_tokens: int
    stops: list[str]


def conversation_of(messages: Sequence[ChatMessage], conv_mode: str, tokenizer: Any) -> Conversation:
    """The conversation of the template `conv_mode`, through training's `conversation_from_sample`.

    Literal `<image>` text is removed (images come from image parts only). The sample gets an empty last
    answer (LLaVA samples end with one), which is then taken off to leave the user's turn open.
    """
    turns = []
    for message in messages:
        text = message.text.replace(DEFAULT_IMAGE_TOKEN, "")
        tags = DEFAULT_IMAGE_TOKEN * len(message.image_urls)
        turns.append({"from": SAMPLE_ROLES[message.role], "value": tags + text})
    sample = {"conversations": turns + [{"from": "gpt", "value": ""}],
              "image": [url for message in messages for url, _ in message.image_urls]}
    conversation = conversation_from_sample(sample, conv_mode, tokenizer)
    conversation.messages.pop()
    return conversation


def prepare_chat(request: ChatRequest, loaded: LoadedModel, limits: PromptLimits,
                 tokenizer_lock: threading.Lock) -> PreparedChat:
    """Open the images, render and tokenize the conversation, and settle `max_tokens` against the limits.

    Raises an ApiError (400) naming the problem: too many images, an image that cannot be used, a prompt
    that does not fit the context, or `max_tokens` over the server's limit or past the context.
    """
    if request.max_tokens is not None and request.max_tokens > limits.max_new_tokens:
        raise invalid_request(f"max_tokens={request.max_tokens} is over this server's limit of {limits.max_new_tokens} "
                              "(--max-new-tokens)", code="invalid_value", param="max_tokens")
    urls = [(url, param) for message in request.messages for url, param in message.image_urls]
    if len(urls) > limits.max_images:
        raise invalid_request(f"the conversation holds {len(urls)} images; this model takes at most "
                              f"{limits.max_images} per conversation (--max-images)", code="too_many_images",
                              param="messages")
    images = [open_image_url(url, limits.images, param) for url, param in urls]
    model = loaded.model
    pixel_values = pixel_values_of(images, loaded)  # outside the lock: large images take a while
    with tokenizer_lock:
        conversation = conversation_of(request.messages, loaded.conv_mode, loaded.tokenizer)
        prompt = encode_prompt(conversation, [], loaded.tokenizer, loaded.image_processor, model,
                               pixel_values=pixel_values)
    prompt_tokens = len(prompt.input_ids)
    room = loaded.context_length - prompt_tokens
    if room < 1:
        raise invalid_request(f"the prompt is {prompt_tokens} tokens (images included), which leaves no room for an "
                              f"answer in this model's context of {loaded.context_length} tokens; shorten the "
                              "conversation", code="context_length_exceeded", param="messages")
    if request.max_tokens is not None and request.max_tokens > room:
        raise invalid_request(f"max_tokens={request.max_tokens} does not fit: the prompt is {prompt_tokens} tokens and "
                              f"this model's context is {loaded.context_length}; ask for at most {room}",
                              code="context_length_exceeded", param="max_tokens")
    max_tokens = request.max_tokens if request.max_tokens is not None else min(limits.max_new_tokens, room)
    stop_str = new_conversation(loaded.conv_mode, loaded.tokenizer).stop_str
    return PreparedChat(prompt, max_tokens, ([stop_str] if stop_str else []) + request.stop)


def pixel_values_of(images: Sequence[Image.Image], loaded: LoadedModel) -> Any:
    """The images preprocessed as `encode_prompt` would (the checkpoint's aspect-ratio mode), or None."""
    if not images:
        return None
    config = loaded.model.config
    return process_images(images, loaded.image_processor, getattr(config, "image_aspect_ratio", "pad"),
                          getattr(config, "image_grid_pinpoints", None))
