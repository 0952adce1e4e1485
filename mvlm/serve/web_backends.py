"""The web UI's backends: OpenAI-compatible servers, asked through the `openai` client, streamed.

Every backend is a base URL (`http://host:port/v1`) and a model name on it: a server given with
--api-url, or mvlm's own server started in-process for a --model-path. When a request fails, the
error says what failed, in the words of whoever knows: "cannot reach http://...: connection refused",
"http://... answered HTTP 400: <the server's own message>", "no answer from http://... within 600 s".
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import openai

from mvlm.errors import MvlmError

CONNECT_TIMEOUT_S = 10.0
LIST_TIMEOUT_S = 10.0


class BackendError(MvlmError):
    """A backend that cannot answer; the message says which and why."""


@dataclass
class Backend:
    """One choice in the page's model menu."""

    label: str
    base_url: str
    model: str | None = None  # None: the server was down at start; its first model is asked for at each question
    api_key: str = "EMPTY"
    timeout_s: float = 600.0
    _client: openai.AsyncOpenAI | None = field(default=None, repr=False, compare=False)

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:  # made on first use, inside the event loop that uses it
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0,
                                              timeout=openai.Timeout(self.timeout_s, connect=CONNECT_TIMEOUT_S))
        return self._client


def _connection_reason(error: BaseException) -> str:
    """Why a connection failed, from the deepest error in the chain: `connection refused`, a DNS error..."""
    reason, seen = None, set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or getattr(current, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return f"unknown host ({current.strerror or current})"
        if isinstance(current, TimeoutError) or type(current).__name__.endswith("Timeout"):
            return "timed out while connecting"
        text = (getattr(current, "strerror", None) or str(current)).strip()
        if text and text != "Connection error.":
            reason = text
        current = current.__cause__ or current.__context__
    return reason or "connection failed"


def _server_message(error: openai.APIStatusError) -> str:
    """The server's own words: the OpenAI error body's `message` (or FastAPI's `detail`), else the raw body."""
    body: Any = error.body
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, dict) and "message" in value:
                value = value["message"]
            if value:
                return value if isinstance(value, str) else str(value)
    if isinstance(body, str) and body.strip():
        return body.strip()
    try:
        text = error.response.text.strip()
    except (RuntimeError, UnicodeDecodeError):  # a streamed body not read (httpx's ResponseNotRead)
        text = ""
    return text or error.response.reason_phrase or "no message"


def describe_error(error: openai.OpenAIError, backend: Backend) -> str:
    """One sentence a user can act on, naming the backend's URL."""
    where = backend.base_url
    if isinstance(error, openai.APITimeoutError):
        return f"no answer from {where} within {backend.timeout_s:g} s"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot reach {where}: {_connection_reason(error)}"
    if isinstance(error, openai.APIStatusError):
        return f"{where} answered HTTP {error.status_code}: {_server_message(error)}"
    if isinstance(error, openai.APIError):  # e.g. an error event in the middle of a stream
        return f"{where} failed while answering: {error.message}"
    return f"{where} failed: {error}"


def list_models(base_url: str, api_key: str = "EMPTY", timeout_s: float = LIST_TIMEOUT_S) -> list[str]:
    """The model names a server offers (GET /models); raises BackendError when it cannot say."""
    backend = Backend(label=base_url, base_url=base_url, api_key=api_key, timeout_s=timeout_s)
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                           timeout=openai.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S)))
    try:
        with client:
            return [model.id for model in client.models.list()]
    except openai.OpenAIError as error:
        raise BackendError(describe_error(error, backend)) from error


async def _model_of(backend: Backend) -> str:
    if backend.model is not None:
        return backend.model
    try:
        page = await backend.client.models.list()
    except openai.OpenAIError as error:
        raise BackendError(describe_error(error, backend)) from error
    if not page.data:
        raise BackendError(f"{backend.base_url} serves no model (GET /models listed none)")
    return page.data[0].id


async def stream_answer(backend: Backend, messages: list[dict[str, Any]], *, temperature: float, top_p: float,
                        max_tokens: int) -> AsyncIterator[str]:
    """The answer's text as it arrives, piece by piece. Closing the iterator (the page's stop button)
    closes the HTTP stream, which tells the server to stop generating."""
    model = await _model_of(backend)
    try:
        stream = await backend.client.chat.completions.create(
            model=model, messages=messages, stream=True,  # type: ignore[arg-type]
            temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content
    except openai.OpenAIError as error:
        raise BackendError(describe_error(error, backend)) from error
