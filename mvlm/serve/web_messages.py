"""Gradio chat history -> OpenAI chat-completions messages, for the web UI (mvlm.serve.gradio_web_server).

Gradio 6 hands a multimodal chat function the new message as `{"text": str, "files": [path, ...]}` and
the history in its messages format: `{"role": "user" | "assistant", "content": [...]}`, where each
content item is `{"type": "text", "text": ...}` or `{"type": "file", "file": {"path": ...}}` (older
shapes are read too: a bare string, `{"path": ...}`, a `(path,)` tuple). Every image goes to the backend
as a base64 data URL inside the user turn it was sent in, before that turn's text, so the model sees it
where LLaVA puts `<image>`. Consecutive messages of one role (Gradio may keep an upload and its text
apart) become one OpenAI message.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any, Iterable

from PIL import Image

from mvlm.errors import DataError

SENT_AS_IS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
"""Formats every OpenAI-compatible server reads; anything else Pillow opens is sent re-encoded as PNG."""


def image_data_url(path: str) -> str:
    """`data:image/...;base64,...` for an image file (its own bytes when PNG/JPEG/GIF/WebP, else PNG)."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DataError(f"cannot read the uploaded file {name}: {error.strerror or error}") from error
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            if image_format not in SENT_AS_IS:
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="PNG")
                data, image_format = buffer.getvalue(), "PNG"
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"the uploaded file {name} is not an image this UI can send ({error})") from error
    return f"data:{SENT_AS_IS[image_format]};base64,{base64.b64encode(data).decode('ascii')}"


def _file_path(item: Any) -> str | None:
    """The server path of a file content item in any of the shapes Gradio uses, else None."""
    if isinstance(item, dict):
        if item.get("type") == "file" and isinstance(item.get("file"), dict):
            return item["file"].get("path")
        if "path" in item and item.get("type") in (None, "file"):
            return item["path"]
    if isinstance(item, tuple) and item and isinstance(item[0], str):
        return item[0]
    return None


def _content_items(content: Any) -> list[Any]:
    return list(content) if isinstance(content, list) else [content]


def _parts(content: Any) -> list[dict[str, Any]]:
    """OpenAI content parts (images first, then text) of one Gradio message's content."""
    images, texts = [], []
    for item in _content_items(content):
        path = _file_path(item)
        if path is not None:
            images.append({"type": "image_url", "image_url": {"url": image_data_url(path)}})
        elif isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text":
            texts.append(item.get("text") or "")
        # components (plots, audio players...) are page decoration, not conversation: skipped
    text = "\n".join(piece for piece in texts if piece)
    return images + ([{"type": "text", "text": text}] if text else [])


def _text_of(parts: list[dict[str, Any]]) -> str:
    return "\n".join(part["text"] for part in parts if part["type"] == "text")


def _merge(messages: Iterable[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One OpenAI message per run of same-role parts: user content as a parts list, assistant as text."""
    merged: list[tuple[str, list[dict[str, Any]]]] = []
    for role, parts in messages:
        if merged and merged[-1][0] == role:
            merged[-1][1].extend(parts)
        else:
            merged.append((role, list(parts)))
    result = []
    for role, parts in merged:
        if role == "user":
            images = [part for part in parts if part["type"] == "image_url"]
            text = _text_of(parts)
            result.append({"role": "user", "content": images + ([{"type": "text", "text": text}] if text else [])})
        else:
            result.append({"role": role, "content": _text_of(parts)})
    return result


def new_message_parts(message: dict[str, Any] | str) -> list[dict[str, Any]]:
    """The OpenAI content parts of what the user just sent (`{"text", "files"}` from a MultimodalTextbox)."""
    if isinstance(message, str):
        return _parts(message)
    paths = [item if isinstance(item, str) else _file_path(item) for item in message.get("files") or []]
    return _parts([(path,) for path in paths if path] + [message.get("text") or ""])


def openai_messages(message: dict[str, Any] | str, history: list[dict[str, Any]],
                    system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The conversation so far plus the new message, as OpenAI chat-completions `messages`."""
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for entry in history:
        role = entry.get("role")
        if role not in ("user", "assistant"):
            continue
        if (entry.get("metadata") or {}).get("title"):
            continue  # a tool/thought box, not something the model said
        parts = _parts(entry.get("content"))
        if parts:
            turns.append((role, parts))
    new_parts = new_message_parts(message)
    if not new_parts:
        raise DataError("the message is empty: type a question or attach an image")
    turns.append(("user", new_parts))
    messages = _merge(turns)
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages
