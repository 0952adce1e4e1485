"""OpenAI chat-completion requests -> `ChatRequest`, checked field by field.

The body is parsed here rather than by FastAPI so that every refusal is a 400 in OpenAI's error shape that
names the parameter (FastAPI's own would be a 422 in its shape). Parameters OpenAI has and this server
cannot honour (several choices, log-probabilities, tools, penalties) are refused when set, not ignored: an
answer decoded other than asked would look like the model's fault. Parameters that change nothing here
(`user`, `metadata`, `store`, ...) are accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mvlm.serve.api_errors import ApiError, invalid_request

MAX_STOP_STRINGS = 4
"""OpenAI's limit on `stop`."""
DEFAULT_TEMPERATURE = 1.0
"""OpenAI's default; 0 decodes greedily."""


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionBody(BaseModel):
    """The fields of OpenAI's request this server reads; the rest are checked by `refuse_unsupported`."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message]
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None


UNSUPPORTED = {  # parameter: (value that changes nothing, why it is refused otherwise)
    "n": (1, "this server returns one choice per request; send n requests"),
    "logprobs": (False, "log-probabilities are not returned"),
    "top_logprobs": (None, "log-probabilities are not returned"),
    "tools": (None, "tool calls are not supported"),
    "tool_choice": (None, "tool calls are not supported"),
    "functions": (None, "function calls are not supported"),
    "function_call": (None, "function calls are not supported"),
    "frequency_penalty": (0, "penalties are not supported"),
    "presence_penalty": (0, "penalties are not supported"),
    "logit_bias": (None, "logit_bias is not supported"),
    "audio": (None, "audio output is not supported"),
}


@dataclasses.dataclass
class ChatMessage:
    """One message: its role (system, user or assistant), its text, and its images in order."""

    role: str
    text: str
    image_urls: list[tuple[str, str]]
    """(url, parameter path such as `messages[0].content[1].image_url.url`) per image."""


@dataclasses.dataclass
class ChatRequest:
    """What the server does for one request, every value checked."""

    messages: list[ChatMessage]
    temperature: float
    top_p: float | None
    max_tokens: int | None
    """None: as many as the server's limit and the context leave."""
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool


def parse_chat_request(body: bytes, served_model: str) -> ChatRequest:
    """The request in `body` (JSON), or an ApiError naming what is wrong (404 for another model's name)."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid_request(f"the request body is not valid JSON: {error}", code="invalid_json") from error
    if not isinstance(raw, dict):
        raise invalid_request(f"the request body must be a JSON object, got {type(raw).__name__}",
                              code="invalid_json")
    if isinstance(raw.get("messages"), list) and not raw["messages"]:
        raise invalid_request("messages is empty: send at least one user message", code="empty_messages",
                              param="messages")
    try:
        parsed = CompletionBody.model_validate(raw)
    except ValidationError as error:
        raise validation_error(error) from error
    if parsed.model != served_model:
        raise ApiError(404, f"the model {parsed.model!r} does not exist here; this server serves {served_model!r}",
                       code="model_not_found", param="model")
    refuse_unsupported(raw)
    return ChatRequest(
        messages=normalized_messages(parsed.messages),
        temperature=DEFAULT_TEMPERATURE if parsed.temperature is None else parsed.temperature,
        top_p=parsed.top_p,
        max_tokens=parsed.max_completion_tokens if parsed.max_completion_tokens is not None else parsed.max_tokens,
        stop=stop_strings(parsed.stop),
        seed=parsed.seed,
        stream=bool(parsed.stream),
        include_usage=bool(parsed.stream_options and parsed.stream_options.include_usage),
    )


def validation_error(error: ValidationError) -> ApiError:
    """The deepest problem pydantic found, as `messages[0].content: ...` (OpenAI's parameter spelling); a value
    that fits no member of a union (e.g. `content` neither a string nor a list) lists what each would need."""
    problems = error.errors()
    depth = max(len(problem["loc"]) for problem in problems)
    deepest = [problem for problem in problems if len(problem["loc"]) == depth]
    param = parameter_path(deepest[0]["loc"])
    messages = [problem["msg"] for problem in problems if parameter_path(problem["loc"]) == param]
    if deepest[0]["type"] == "missing":
        messages = ["missing required parameter"]
    messages = list(dict.fromkeys(messages))
    lead = "Input should be "
    if len(messages) > 1 and all(message.startswith(lead) for message in messages):
        messages = [messages[0]] + [message[len(lead):] for message in messages[1:]]
    text = " or ".join(messages)
    return invalid_request(f"{param}: {text}" if param else text, code="invalid_value", param=param or None)


def parameter_path(loc: tuple[Any, ...]) -> str:
    """('messages', 0, 'content', 'str') -> 'messages[0].content': pydantic's union member names are dropped,
    and so is the tag of a tagged union (the second `image_url` in `...image_url.image_url.url`)."""
    path, previous = "", None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "none") or part == previous:
            continue
        else:
            path += f".{part}" if path else part
        previous = part
    return path


def refuse_unsupported(raw: dict[str, Any]) -> None:
    for name, (harmless, why) in UNSUPPORTED.items():
        value = raw.get(name)
        if value is not None and value != harmless and value not in ([], {}):
            raise invalid_request(f"{name}={json.dumps(value)[:60]} is not supported: {why}",
                                  code="unsupported_parameter", param=name)
    response_format = raw.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise invalid_request("response_format: only {\"type\": \"text\"} is supported", code="unsupported_parameter",
                              param="response_format")


def stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise invalid_request(f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}",
                              code="invalid_value", param="stop")
    if any(not text for text in stops):
        raise invalid_request("stop: a stop string must not be empty", code="invalid_value", param="stop")
    return stops


def normalized_messages(messages: list[Message]) -> list[ChatMessage]:
    """Each message's text and images, roles checked: system messages first, then user and assistant turns
    alternating, starting and ending with the user (the model answers the last user message)."""
    out: list[ChatMessage] = []
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        text, images = message_parts(message, index)
        param = f"messages[{index}]"
        if role == "system":
            if out and out[-1].role != "system":
                raise invalid_request(f"{param}: a system message must come before the conversation's first user "
                                      "message", code="invalid_message_order", param=param)
            if images:
                raise invalid_request(f"{param}: a system message cannot hold images", code="invalid_content",
                                      param=param)
            if out:  # several leading system messages read as one
                out[-1].text += "\n" + text
                continue
        elif role == "assistant":
            if images:
                raise invalid_request(f"{param}: an assistant message cannot hold images", code="invalid_content",
                                      param=param)
            if not out or out[-1].role != "user":
                raise invalid_request(f"{param}: an assistant message must follow a user message (roles alternate "
                                      "user, assistant, ...)", code="invalid_message_order", param=param)
        elif out and out[-1].role == "user":
            raise invalid_request(f"{param}: two user messages in a row; the roles must alternate user, assistant, "
                                  "... (put both texts in one message)", code="invalid_message_order", param=param)
        out.append(ChatMessage(role, text, images))
    if not out or out[-1].role != "user":
        last = out[-1].role if out else "none"
        raise invalid_request(f"the last message must be from the user (it is the one answered); it is {last!r}",
                              code="invalid_message_order", param="messages")
    return out


def message_parts(message: Message, index: int) -> tuple[str, list[tuple[str, str]]]:
    """(the text parts joined by newlines, the image URLs with their parameter paths)."""
    if message.content is None:
        if message.role != "assistant":
            raise invalid_request(f"messages[{index}].content: missing (only an assistant message may leave it out)",
                                  code="invalid_content", param=f"messages[{index}].content")
        return "", []
    if isinstance(message.content, str):
        return message.content, []
    texts, images = [], []
    for number, part in enumerate(message.content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        else:
            images.append((part.image_url.url, f"messages[{index}].content[{number}].image_url.url"))
    return "\n".join(texts), images
