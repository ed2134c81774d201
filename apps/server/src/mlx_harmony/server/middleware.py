"""Pure ASGI middleware: the request log, the Host check, the API key, the body size limit.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so that streamed responses pass through
untouched and the routes can still hear the client disconnect.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import client_key, current_client, current_key, key_digest, match_key
from .errors import error_body

__all__ = [
    "LOOPBACK_HOSTS",
    "ApiKeyMiddleware",
    "BodyLimitMiddleware",
    "HostCheckMiddleware",
    "RequestLogMiddleware",
    "default_allowed_hosts",
    "make_request_logger",
    "printable",
]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The names a loopback-bound server answers to by default."""

_PUBLIC_PATHS = frozenset({"/health", "/v1/health"})
"""Routes that need no API key."""


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

    def __init__(
        self, app: ASGIApp, *, logger: logging.Logger, api_keys: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.logger = logger
        self.api_keys = tuple(api_keys)

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
        key = match_key(_header(scope, b"authorization"), self.api_keys)
        current_key.set(key_digest(key) if key else "")
        current_client.set(client_key(key, client[0] if client else None))
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
                printable(scope.get("method", "-")),
                printable(scope.get("path", "-")),
                status,
                prompt,
                completion,
                time.perf_counter() - started,
                extra,
            )


def printable(text: str) -> str:
    """`text` with control and other unprintable characters escaped (``\\n``, ``\\x1b``), so
    a request cannot write a forged line into the log."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def default_allowed_hosts(bind_host: str) -> tuple[str, ...] | None:
    """The loopback names for a loopback-bound server; None (any Host) otherwise."""
    if bind_host in LOOPBACK_HOSTS or bind_host.startswith("127."):
        return (*LOOPBACK_HOSTS, bind_host) if bind_host not in LOOPBACK_HOSTS else LOOPBACK_HOSTS
    return None


class HostCheckMiddleware:
    """400 for a ``Host`` header that is not in `allowed` (names, without the port), so a web
    page that rebinds its DNS name to this machine cannot drive the server."""

    def __init__(self, app: ASGIApp, *, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(name.lower() for name in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _host_name(_header(scope, b"host") or "")
        if host in self.allowed:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["error"] = "invalid_host"
        await _send_error(
            send,
            400,
            f"the Host header {printable(host)!r} is not served here; allowed: "
            f"{', '.join(sorted(self.allowed))} (start the server with --allowed-hosts to "
            "change the list)",
            code="invalid_host",
            param="Host",
        )


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


class ApiKeyMiddleware:
    """With API keys set, every route but the health check needs ``Authorization: Bearer KEY``
    (the schema and the docs pages too)."""

    def __init__(self, app: ASGIApp, *, api_keys: Iterable[str]) -> None:
        self.app = app
        self.api_keys = tuple(api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path") in _PUBLIC_PATHS
            or scope.get("method") == "OPTIONS"  # CORS preflights carry no credentials
            or match_key(_header(scope, b"authorization"), self.api_keys)
        ):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["error"] = "invalid_api_key"
        await _send_error(
            send,
            401,
            "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
            "key the server was started with (--api-key or MLX_HARMONY_API_KEY)",
            code="invalid_api_key",
            type="authentication_error",
            headers=[(b"www-authenticate", b"Bearer")],
        )


async def _send_error(
    send: Send,
    status: int,
    message: str,
    *,
    code: str,
    param: str | None = None,
    type: str = "invalid_request_error",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(error_body(message, type=type, param=param, code=code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
