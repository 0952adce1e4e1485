"""The web UI's page: a Gradio 6 multimodal ChatInterface in front of OpenAI-compatible backends.

Image upload and text in one box, streamed answers, a stop button, temperature / top-p / max-tokens
under "Parameters", and a model menu above the chat when there are several backends (ask one, pick
another, press the retry button under the answer: the other answers the same question in its place).
A failure shows in the chat as an error box that says what failed (see mvlm.serve.web_backends).
"""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass
from typing import Any, AsyncIterator

import gradio as gr

from mvlm.errors import DataError
from mvlm.serve.web_backends import Backend, BackendError, stream_answer
from mvlm.serve.web_messages import openai_messages

TITLE = "mvlm chat"


@dataclass(frozen=True)
class Settings:
    """The parameter controls' starting values (command-line flags)."""

    temperature: float = 0.2
    top_p: float = 0.7
    max_tokens: int = 512
    system_prompt: str | None = None
    concurrency: int = 8


ERROR_TITLE = "⚠️ Error"
MARKDOWN_SPECIALS = set("&<>\\`*_{}[]#|~$")


def error_message(text: str) -> gr.ChatMessage:
    """A failure shown in the chat, in a box titled "⚠️ Error" (a "thought" box, open), so the page stays
    usable (a raised gr.Error leaves Gradio 6's ChatInterface input disabled) and the history replayed to
    the backend leaves it out (mvlm.serve.web_messages skips messages with a title)."""
    return gr.ChatMessage(role="assistant", content=as_plain_markdown(text), metadata={"title": ERROR_TITLE})


def as_plain_markdown(text: str) -> str:
    """Text that the chat's Markdown shows as written (a server's message may hold `<image>`, `a_b_c`, `*`):
    HTML's and Markdown's special characters as numeric entities (Gradio shows backslash escapes as typed)."""
    return "".join(f"&#{ord(char)};" if char in MARKDOWN_SPECIALS else char for char in text)


def _description(backends: list[Backend]) -> str:
    if len(backends) == 1:
        backend = backends[0]
        return f"Model: **{html.escape(backend.label)}** (OpenAI-compatible API at `{backend.base_url}`)"
    return (f"{len(backends)} models: pick one in the menu. To hear another on the same question, pick it and "
            "press the retry button under the answer.")


def build_page(backends: list[Backend], settings: Settings = Settings()) -> gr.Blocks:
    """The Gradio app (not launched)."""
    if not backends:
        raise ValueError("the page needs at least one backend")
    by_label = {backend.label: backend for backend in backends}
    if len(by_label) != len(backends):
        raise ValueError(f"two backends share a label: {[backend.label for backend in backends]}")

    async def respond(message: dict[str, Any], history: list[dict[str, Any]], temperature: float, top_p: float,
                      max_tokens: float, choice: str | None = None) -> AsyncIterator[Any]:
        backend = by_label.get(choice or "", backends[0])
        try:
            messages = openai_messages(message, history, settings.system_prompt)
        except DataError as error:
            yield error_message(f"cannot send this message: {error}")
            return
        answer = ""
        try:
            async for piece in stream_answer(backend, messages, temperature=float(temperature), top_p=float(top_p),
                                             max_tokens=int(max_tokens)):
                answer += piece
                yield answer
        except BackendError as error:
            print(f"[mvlm] {backend.label}: {error}", file=sys.stderr, flush=True)
            failure = error_message(str(error))
            yield [gr.ChatMessage(role="assistant", content=answer), failure] if answer else failure

    with gr.Blocks(title=TITLE, analytics_enabled=False, fill_height=True) as page:
        gr.Markdown(f"## {TITLE}\n{_description(backends)}")
        model_menu = None
        if len(backends) > 1:
            model_menu = gr.Dropdown(choices=[backend.label for backend in backends], value=backends[0].label,
                                     label="Model", interactive=True, elem_id="model-menu")
        parameters = [
            gr.Slider(0.0, 1.0, value=settings.temperature, step=0.05, label="Temperature",
                      info="0 decodes greedily", elem_id="temperature", render=False),
            gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top P", elem_id="top-p", render=False),
            gr.Slider(1, max(1024, settings.max_tokens), value=settings.max_tokens, step=1, label="Max new tokens",
                      elem_id="max-tokens", render=False),
        ]  # not rendered here: ChatInterface puts them into its "Parameters" accordion. OpenAI's top_p is > 0;
        # 1024 is mvlm's server's default cap on max_tokens (its --max-new-tokens)
        textbox = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", sources=["upload"],
                                       placeholder="Ask about an image: attach it with the clip, type, press Enter",
                                       show_label=False, submit_btn=True, stop_btn=True, autofocus=True,
                                       elem_id="chat-input")
        gr.ChatInterface(
            respond,
            multimodal=True,
            chatbot=gr.Chatbot(label="Chat", elem_id="chatbot", scale=1, min_height=360),
            textbox=textbox,
            additional_inputs=parameters + ([model_menu] if model_menu is not None else []),
            additional_inputs_accordion=gr.Accordion("Parameters", open=False, render=False),
            concurrency_limit=settings.concurrency,
            fill_height=True,
            analytics_enabled=False,
            api_name="chat",
        )
    return page
