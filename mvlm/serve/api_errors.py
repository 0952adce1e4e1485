"""Errors the OpenAI-compatible server answers with, in OpenAI's shape.

Every refusal is an `ApiError` carrying its HTTP status and OpenAI's `{"error": {"message", "type", "param",
"code"}}` fields, so that any OpenAI client shows the message (which names what is wrong) instead of a bare
status. Request errors are the client's to fix, so they are `MvlmError`s too; server errors (out of memory,
a bug during generation) answer the requests they hit and leave the server running.
"""

from __future__ import annotations

from typing import Any

from mvlm.errors import MvlmError

INVALID_REQUEST = "invalid_request_error"
"""OpenAI's error type for a request the client must change."""
SERVER_ERROR = "server_error"
RATE_LIMIT = "rate_limit_error"


class ApiError(MvlmError):
    """An answer other than 200: its status, OpenAI's error type and code, and the parameter at fault."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST, code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        """OpenAI's error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid_request(message: str, *, code: str = "invalid_request", param: str | None = None,
                    status: int = 400) -> ApiError:
    """A 400 (or `status`) the client fixes by changing the request."""
    return ApiError(status, message, code=code, param=param)
