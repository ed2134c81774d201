"""Errors of the api-client: one class per kind of failure, each with the server's message.

The server answers every error in OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``); `APIStatusError` keeps those fields, and its subclasses say what happened
without looking at the number.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "NotFoundError",
    "RequestTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
    "error_for_status",
]


class APIError(Exception):
    """Anything that went wrong talking to the server."""


class APIConnectionError(APIError):
    """The server could not be reached (after the retries), or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The server did not answer in time."""


class APIStatusError(APIError):
    """The server answered with an error status; ``message``, ``type``, ``param`` and ``code``
    come from its OpenAI-shaped body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        body: Any = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.body = body
        where = f" (param {param})" if param else ""
        super().__init__(f"{status_code}: {message}{where}")


class BadRequestError(APIStatusError):
    """400: malformed JSON, a value out of range, a prompt longer than the context."""


class AuthenticationError(APIStatusError):
    """401: no API key or the wrong one; pass ``api_key=`` (the server's --api-key)."""


class NotFoundError(APIStatusError):
    """404: an unknown model (see ``models()``) or route."""


class RequestTooLargeError(APIStatusError):
    """413: the request body is over the server's --max-body-bytes."""


class UnprocessableEntityError(APIStatusError):
    """422: the body does not match the schema (wrong types, an unknown role)."""


class ServerError(APIStatusError):
    """5xx: the server failed."""


class ServiceUnavailableError(ServerError):
    """503: the model cannot be loaded, or the server's queue is full; try again later."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    503: ServiceUnavailableError,
}


def error_for_status(status_code: int, body: Any) -> APIStatusError:
    """The error for a response: its status and its (OpenAI-shaped, or any) body."""
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        message = str(detail.get("message") or "error")
        kind, param, code = detail.get("type"), detail.get("param"), detail.get("code")
    else:
        text = body if isinstance(body, str) else repr(body)
        message = text[:500] or f"HTTP {status_code}"
        kind = param = code = None
    cls = _BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else APIStatusError)
    return cls(status_code, message, type=kind, param=param, code=code, body=body)
