"""OpenAI-style API errors: one exception type and its JSON body.

Every failure a client can cause leaves the server as `{"error": {"message", "type", "param", "code"}}`
with a 4xx status; `param` names the request field at fault in OpenAI's notation
(`messages[0].content[1]`, `regions[2].rle`), or is null when no single field is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence


class APIError(Exception):
    """An error answered to the client.

    Args:
        status: HTTP status (400 bad request, 401, 404 unknown model, 413 body too large, 429 queue
            full, 503 shutting down).
        message: what was wrong and what is accepted.
        param: the request field at fault (`"regions"`, `"messages[0].content[1]"`) or None.
        type: OpenAI's error type (`invalid_request_error`, `authentication_error`, ...).
        code: a short machine-readable code or None.
        headers: extra response headers (`Retry-After` for 429).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        """The OpenAI error JSON."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 `invalid_request_error`."""
    return APIError(400, message, param=param, code=code)


def param_path(location: Sequence[str | int]) -> str | None:
    """OpenAI's field notation for a location tuple: `("messages", 0, "content", 1)` ->
    `"messages[0].content[1]"`; a key that is not an identifier (a client's unknown field `"a b"`) is
    quoted, `regions[0]["a b"]`; an empty location -> None."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.isidentifier():
            path += f"[{json.dumps(part)}]"
        else:
            path += f".{part}" if path else str(part)
    return path or None
