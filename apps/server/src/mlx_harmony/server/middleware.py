"""Pure ASGI middleware: the request log and the body size limit.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so that streamed responses pass through
untouched and the routes can still hear the client disconnect.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import client_key, current_client
from .errors import error_body

__all__ = ["BodyLimitMiddleware", "RequestLogMiddleware", "make_request_logger"]


def make_request_logger(log_file: str | None) -> logging.Logger:
    """A logger that writes one plain line per request to `log_file` (appending) or stderr."""
    logger = logging.getLogger(f"mlx_harmony.server.requests.{id(object())}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler: logging.Handler = (
        logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    return logger


class RequestLogMiddleware:
    """One line per HTTP request: id, method and route, status, prompt and completion tokens,
    seconds. The id comes from the client's ``x-request-id`` or is made up, and is returned in
    the response's ``x-request-id`` header."""

    def __init__(self, app: ASGIApp, *, logger: logging.Logger) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or secrets.token_hex(8)
        request_id = "".join(c for c in request_id if c.isalnum() or c in "-_.")[:64] or "req"
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        client = scope.get("client")
        current_client.set(
            client_key(_header(scope, b"authorization"), client[0] if client else None)
        )
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            outcome = state.get("outcome")
            prompt = getattr(outcome, "prompt_tokens", 0)
            completion = getattr(outcome, "completion_tokens", 0)
            extra = ""
            if getattr(outcome, "cancelled", False):
                extra = " cancelled"
            elif getattr(outcome, "finish_reason", None):
                extra = f" finish={outcome.finish_reason}"  # type: ignore[union-attr]
            if state.get("error"):
                extra += f" error={state['error']}"
            self.logger.info(
                "%s %s %s %d prompt=%d completion=%d %.3fs%s",
                request_id,
                scope.get("method", "-"),
                scope.get("path", "-"),
                status,
                prompt,
                completion,
                time.perf_counter() - started,
                extra,
            )


class _TooLarge(HTTPException):
    """Raised while the body is read; an HTTPException so that FastAPI passes it on."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`, from Content-Length or while a chunked body streams."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, send, int(length))
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    scope.setdefault("state", {})["error"] = "request_too_large"
                    raise _TooLarge(self._message(seen))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, send, seen)

    def _message(self, size: int) -> str:
        return (
            f"the request body has {size} bytes or more, over the limit of {self.max_bytes} "
            "(--max-body-bytes)"
        )

    async def _reject(self, scope: Scope, send: Send, size: int) -> None:
        scope.setdefault("state", {})["error"] = "request_too_large"
        body = json.dumps(
            error_body(
                self._message(size),
                type="invalid_request_error",
                code="request_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
