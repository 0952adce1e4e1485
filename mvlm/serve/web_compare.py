"""The web UI's "Side by side" tab: one question, two models, both answers streaming next to each other.

LLaVA's controller let people put checkpoints next to each other; here the page does it over any two of
its OpenAI-compatible backends. Each side keeps its own conversation (a model sees its own earlier
answers, never the other's), the question and image go to both at once, the stop button ends both,
and a side whose backend fails shows the error box while the other goes on answering.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, TypeVar

import gradio as gr

from mvlm.errors import DataError
from mvlm.serve.web_answers import answer_updates, as_history, error_message
from mvlm.serve.web_backends import Backend
from mvlm.serve.web_messages import openai_messages

T = TypeVar("T")
_DONE = object()


async def interleave(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """(index, item) from several async iterators at once, each item as soon as its iterator gives it.

    Closing or cancelling the result cancels every iterator still running (so their HTTP streams close);
    an iterator's unexpected error is raised here, after the others are cancelled.
    """
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def drain(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((index, item))
        except Exception as error:  # handed to the reader, which raises it
            queue.put_nowait((index, error))
        finally:
            queue.put_nowait((index, _DONE))

    tasks = [asyncio.create_task(drain(index, stream)) for index, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def user_entry(message: dict[str, Any]) -> dict[str, Any]:
    """The question as the chat shows it: the attached images, then the text (as Gradio's ChatInterface)."""
    files = [item if isinstance(item, str) else item.get("path") for item in message.get("files") or []]
    content: list[Any] = [{"path": path} for path in files if path]
    if message.get("text"):
        content.append(message["text"])
    return {"role": "user", "content": content}


async def ask_both(backends: list[Backend], message: dict[str, Any], histories: tuple[list[Any], list[Any]],
                   labels: tuple[str, str], *, system_prompt: str | None, temperature: float, top_p: float,
                   max_tokens: int) -> AsyncIterator[tuple[list[Any], list[Any]]]:
    """Both chats' histories as the question goes to the backends labelled `labels` and their answers grow:
    first with the question added to each, then once per piece either answer receives."""
    by_label = {backend.label: backend for backend in backends}
    histories = (list(histories[0] or []), list(histories[1] or []))
    try:
        conversations = [openai_messages(message, history, system_prompt) for history in histories]
    except DataError as error:
        failure = error_message(f"cannot send this message: {error}")
        yield histories[0] + [failure], histories[1] + [failure]
        return
    asked = [history + [user_entry(message)] for history in histories]
    shown: list[list[Any]] = [[], []]
    yield asked[0], asked[1]
    streams = [answer_updates(by_label.get(label, backends[0]), conversation, temperature=temperature, top_p=top_p,
                              max_tokens=max_tokens)
               for label, conversation in zip(labels, conversations)]
    async for side, update in interleave(streams):
        shown[side] = as_history(update)
        yield asked[0] + shown[0], asked[1] + shown[1]


def build_compare_tab(backends: list[Backend], parameters: list[gr.components.Component], *,
                      system_prompt: str | None, concurrency: int) -> None:
    """Render the tab's parts into the Blocks being built; `parameters` are the temperature, top-p and
    max-tokens controls the chat tab uses too."""
    labels = [backend.label for backend in backends]

    async def on_question(message: dict[str, Any], left: list[Any], right: list[Any], left_label: str,
                          right_label: str, temperature: float, top_p: float,
                          max_tokens: float) -> AsyncIterator[tuple[list[Any], list[Any]]]:
        async for both in ask_both(backends, message, (left, right), (left_label, right_label),
                                   system_prompt=system_prompt, temperature=float(temperature), top_p=float(top_p),
                                   max_tokens=int(max_tokens)):
            yield both

    with gr.Row():
        menus = [gr.Dropdown(choices=labels, value=labels[min(index, len(labels) - 1)], label=f"Model {name}",
                             interactive=True, elem_id=f"{side}-model")
                 for index, (name, side) in enumerate((("A", "left"), ("B", "right")))]
    with gr.Row(equal_height=True):
        chats = [gr.Chatbot(label=f"Model {name}", elem_id=f"{side}-chat", min_height=320)
                 for name, side in (("A", "left"), ("B", "right"))]
    textbox = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", sources=["upload"],
                                   placeholder="One question for both: attach an image, type, press Enter",
                                   show_label=False, submit_btn=True, stop_btn=False, elem_id="compare-input")
    clear = gr.Button("Clear both", elem_id="compare-clear", size="sm")
    question = gr.State(None)

    sent = textbox.submit(lambda message: (gr.MultimodalTextbox(value=None, interactive=False, submit_btn=False,
                                                                stop_btn=True), message),
                          [textbox], [textbox, question], queue=False, api_visibility="private")
    answering = sent.then(on_question, [question, *chats, *menus, *parameters], chats, concurrency_limit=concurrency,
                          api_visibility="private")
    answering.then(lambda: gr.MultimodalTextbox(interactive=True, submit_btn=True, stop_btn=False), None, [textbox],
                   queue=False, api_visibility="private")
    textbox.stop(None, None, None, cancels=[answering], api_visibility="private")
    clear.click(lambda: ([], []), None, chats, queue=False, api_visibility="private")
