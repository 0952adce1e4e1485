"""What the web UI shows while a backend answers: the growing answer, or an error box that says what failed.

Both the chat tab and the side-by-side tab (mvlm.serve.web_compare) show answers through
`answer_updates`, so a failure reads the same in either.
"""

from __future__ import annotations

import sys
from typing import Any, AsyncIterator

import gradio as gr

from mvlm.serve.web_backends import Backend, BackendError, stream_answer

ERROR_TITLE = "⚠️ Error"
MARKDOWN_SPECIALS = set("&<>\\`*_{}[]#|~$")

Shown = str | gr.ChatMessage | list[gr.ChatMessage]
"""What the chat shows of one answer: its text so far, an error box, or the partial text and then the box."""


def error_message(text: str) -> gr.ChatMessage:
    """A failure shown in the chat, in a box titled "⚠️ Error" (a "thought" box, open), so the page stays
    usable (a raised gr.Error leaves Gradio 6's ChatInterface input disabled) and the history replayed to
    the backend leaves it out (mvlm.serve.web_messages skips messages with a title)."""
    return gr.ChatMessage(role="assistant", content=as_plain_markdown(text), metadata={"title": ERROR_TITLE})


def as_plain_markdown(text: str) -> str:
    """Text that the chat's Markdown shows as written (a server's message may hold `<image>`, `a_b_c`, `*`):
    HTML's and Markdown's special characters as numeric entities (Gradio shows backslash escapes as typed)."""
    return "".join(f"&#{ord(char)};" if char in MARKDOWN_SPECIALS else char for char in text)


async def answer_updates(backend: Backend, messages: list[dict[str, Any]], *, temperature: float, top_p: float,
                         max_tokens: int) -> AsyncIterator[Shown]:
    """The answer as it grows; when the backend fails, what it said so far followed by the error box."""
    answer = ""
    try:
        async for piece in stream_answer(backend, messages, temperature=temperature, top_p=top_p,
                                         max_tokens=max_tokens):
            answer += piece
            yield answer
    except BackendError as error:
        print(f"[mvlm] {backend.label}: {error}", file=sys.stderr, flush=True)
        failure = error_message(str(error))
        yield [gr.ChatMessage(role="assistant", content=answer), failure] if answer else failure


def as_history(shown: Shown) -> list[Any]:
    """The chat history entries that show `shown` (for a Chatbot the page updates itself)."""
    if isinstance(shown, str):
        return [{"role": "assistant", "content": shown}]
    return list(shown) if isinstance(shown, list) else [shown]
