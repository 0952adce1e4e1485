"""Answer bodies in OpenAI's chat-completion shapes: the whole answer, stream chunks, usage, the model list."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from mvlm.serve.batch_rows import Finished


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(finished: Finished) -> dict[str, int]:
    return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens}


def completion(answer_id: str, model: str, finished: Finished) -> dict[str, Any]:
    """A non-streamed answer (`chat.completion`)."""
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": finished.text, "refusal": None},
                     "logprobs": None, "finish_reason": finished.finish_reason}],
        "usage": usage(finished),
        "system_fingerprint": None,
    }


class ChunkWriter:
    """Server-sent events of one streamed answer: `chat.completion.chunk` objects, then `data: [DONE]`.

    The first chunk carries the role, then each piece of text its own chunk, then a chunk with the
    finish reason; with `include_usage`, every chunk has `"usage": null` and a last chunk with no choices
    carries the usage, as OpenAI streams it.
    """

    def __init__(self, answer_id: str, model: str, include_usage: bool):
        self.answer_id = answer_id
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())

    def role(self) -> str:
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, text: str) -> str:
        return self._chunk({"content": text})

    def end(self, finished: Finished) -> str:
        events = self._chunk({}, finished.finish_reason)
        if self.include_usage:
            events += self._event({**self._base(), "choices": [], "usage": usage(finished)})
        return events + "data: [DONE]\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        body = {**self._base(),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if self.include_usage:
            body["usage"] = None
        return self._event(body)

    def _base(self) -> dict[str, Any]:
        return {"id": self.answer_id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": None}

    @staticmethod
    def _event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def error_event(body: dict[str, Any]) -> str:
    """An error after the stream has begun (its status is sent already): OpenAI's clients raise it."""
    return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n"


def model_list(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(model, created)]}


def model_card(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "mvlm"}
