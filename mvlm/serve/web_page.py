"""The web UI's page: a Gradio 6 multimodal ChatInterface in front of OpenAI-compatible backends.

Image upload and text in one box, streamed answers, a stop button, temperature / top-p / max-tokens
under "Parameters". With several backends, a model menu above the chat (ask one, pick another, press
the retry button under the answer: the other answers the same question in its place), and a second tab,
"Side by side", that asks two of them the same question at once (mvlm.serve.web_compare).
A failure shows in the chat as an error box that says what failed (see mvlm.serve.web_backends).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import gradio as gr

from mvlm.errors import DataError
from mvlm.serve.web_answers import Shown, answer_updates, error_message
from mvlm.serve.web_backends import Backend
from mvlm.serve.web_compare import build_compare_tab
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


def _description(backends: list[Backend]) -> str:
    if len(backends) == 1:
        backend = backends[0]
        return f"Model: **{html.escape(backend.label)}** (OpenAI-compatible API at `{backend.base_url}`)"
    return (f"{len(backends)} models: pick one in the menu. To hear another on the same question, pick it and "
            "press the retry button under the answer, or ask two at once in the **Side by side** tab.")


def build_page(backends: list[Backend], settings: Settings = Settings()) -> gr.Blocks:
    """The Gradio app (not launched)."""
    if not backends:
        raise ValueError("the page needs at least one backend")
    by_label = {backend.label: backend for backend in backends}
    if len(by_label) != len(backends):
        raise ValueError(f"two backends share a label: {[backend.label for backend in backends]}")

    async def respond(message: dict[str, Any], history: list[dict[str, Any]], temperature: float, top_p: float,
                      max_tokens: float, choice: str | None = None) -> AsyncIterator[Shown]:
        backend = by_label.get(choice or "", backends[0])
        try:
            messages = openai_messages(message, history, settings.system_prompt)
        except DataError as error:
            yield error_message(f"cannot send this message: {error}")
            return
        async for shown in answer_updates(backend, messages, temperature=float(temperature), top_p=float(top_p),
                                          max_tokens=int(max_tokens)):
            yield shown

    with gr.Blocks(title=TITLE, analytics_enabled=False, fill_height=True) as page:
        gr.Markdown(f"## {TITLE}\n{_description(backends)}")
        with gr.Accordion("Parameters", open=False):  # above the tabs: both use them
            parameters = [
                gr.Slider(0.0, 1.0, value=settings.temperature, step=0.05, label="Temperature",
                          info="0 decodes greedily", elem_id="temperature"),
                gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top P", elem_id="top-p"),
                gr.Slider(1, max(1024, settings.max_tokens), value=settings.max_tokens, step=1,
                          label="Max new tokens", elem_id="max-tokens"),
            ]  # OpenAI's top_p is > 0; 1024 is mvlm's server's default cap on max_tokens (its --max-new-tokens)
        if len(backends) == 1:
            _chat(respond, parameters, settings)
            return page
        with gr.Tabs():
            with gr.Tab("Chat", elem_id="chat-tab"):
                model_menu = gr.Dropdown(choices=list(by_label), value=backends[0].label, label="Model",
                                         interactive=True, elem_id="model-menu")
                _chat(respond, [*parameters, model_menu], settings)
            with gr.Tab("Side by side", elem_id="compare-tab"):
                build_compare_tab(backends, parameters, system_prompt=settings.system_prompt,
                                  concurrency=settings.concurrency)
    return page


def _chat(respond: Callable[..., AsyncIterator[Shown]], inputs: list[gr.components.Component],
          settings: Settings) -> gr.ChatInterface:
    """The chat: one multimodal input box (images and text), streamed answers, a stop button."""
    textbox = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", sources=["upload"],
                                   placeholder="Ask about an image: attach it with the clip, type, press Enter",
                                   show_label=False, submit_btn=True, stop_btn=True, autofocus=True,
                                   elem_id="chat-input")
    return gr.ChatInterface(
        respond,
        multimodal=True,
        chatbot=gr.Chatbot(label="Chat", elem_id="chatbot", scale=1, min_height=360),
        textbox=textbox,
        additional_inputs=inputs,  # rendered already (above), so ChatInterface adds no accordion of its own
        concurrency_limit=settings.concurrency,
        fill_height=True,
        analytics_enabled=False,
        api_name="chat",
    )
