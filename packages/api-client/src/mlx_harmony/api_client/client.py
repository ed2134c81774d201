"""`Client` and `AsyncClient`: the mlx-harmony server (or any OpenAI-compatible one) over httpx.

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        answer = client.chat([{"role": "user", "content": "Hi"}])
        print(answer.reasoning, answer.content)
        with client.stream_chat([{"role": "user", "content": "Hi"}]) as stream:
            for event in stream:
                ...  # ReasoningDelta, ContentDelta, ToolCallDelta, Finish, Usage

A request that fails to connect (refused, DNS, connect timeout, or a connection dropped
before any response byte) is retried ``max_retries`` times with a growing pause; once the
server has started answering, nothing is retried, since generation may have started.
Closing a stream early closes the connection, and the server cancels the generation.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import APIConnectionError, APIError, APITimeoutError, error_for_status
from .types import (
    ChatCompletion,
    ContentDelta,
    Finish,
    ReasoningDelta,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Usage,
    events_from_chunk,
)

__all__ = ["DEFAULT_BASE_URL", "AsyncChatStream", "AsyncClient", "ChatStream", "Client"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


def _body(
    messages: Sequence[Mapping[str, Any]], model: str | None, params: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": list(messages)}
    if model:
        body["model"] = model
    body.update({k: v for k, v in params.items() if v is not None})
    return body


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text


def _sse_payloads(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined), until ``[DONE]``."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                payload = "\n".join(data)
                data = []
                if payload == "[DONE]":
                    return
                yield payload
            continue
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data and "\n".join(data) != "[DONE]":
        yield "\n".join(data)


def _chunk_events(payload: str) -> list[StreamEvent]:
    try:
        chunk = json.loads(payload)
    except json.JSONDecodeError as error:
        raise APIError(f"the server sent an event that is not JSON: {payload[:200]!r}") from error
    if isinstance(chunk, dict) and chunk.get("error"):
        raise error_for_status(500, chunk)
    return events_from_chunk(chunk) if isinstance(chunk, dict) else []


@dataclass(slots=True)
class _CallParts:
    """One streamed tool call joined so far: its id (the first one sent) and the text pieces."""

    id: str | None = None
    name: str = ""
    arguments: str = ""


class _StreamState:
    """What a stream said so far, joined: the same view as a `ChatCompletion`."""

    def __init__(self) -> None:
        self.reasoning_parts: list[str] = []
        self.content_parts: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.calls: dict[int, _CallParts] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.first_token_at: float | None = None
        self.deltas = 0

    def add(self, event: StreamEvent) -> None:
        kind = type(event)
        if kind is ReasoningDelta or kind is ContentDelta:
            self.deltas += 1
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            if kind is ReasoningDelta:
                self.reasoning_parts.append(event.text)  # type: ignore[union-attr]
            else:
                self.content_parts.append(event.text)  # type: ignore[union-attr]
                self.logprobs.extend(event.logprobs)  # type: ignore[union-attr]
        elif kind is ToolCallDelta:
            call = self.calls.get(event.index)  # type: ignore[union-attr]
            if call is None:
                call = self.calls[event.index] = _CallParts()  # type: ignore[union-attr]
            call.id = event.id or call.id  # type: ignore[union-attr]
            call.name += event.name or ""  # type: ignore[union-attr]
            call.arguments += event.arguments  # type: ignore[union-attr]
        elif kind is Finish:
            self.finish_reason = event.reason  # type: ignore[union-attr]
        elif kind is Usage:
            self.usage = event  # type: ignore[assignment]

    @property
    def content(self) -> str:
        return "".join(self.content_parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_parts)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(call.id or f"call_{i}", call.name, call.arguments)
            for i, call in sorted(self.calls.items())
        )


class ChatStream:
    """A streamed completion: iterate it for events; ``content``, ``reasoning``,
    ``tool_calls``, ``finish_reason`` and ``usage`` hold what came so far. Close it (or leave
    the ``with`` block) to stop early: the server then cancels the generation."""

    def __init__(self, response: httpx.Response, started: float) -> None:
        self._response = response
        self._state = _StreamState()
        self._events: Iterator[StreamEvent] | None = None
        self.started = started
        self.closed = False

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._events is None:
            self._events = self._read()
        return self._events

    def _read(self) -> Iterator[StreamEvent]:
        try:
            for payload in _sse_payloads(self._response.iter_lines()):
                for event in _chunk_events(payload):
                    self._state.add(event)
                    yield event
        except httpx.TimeoutException as error:
            raise APITimeoutError(f"the stream stalled: {error}") from error
        except httpx.HTTPError as error:
            raise APIConnectionError(f"the stream broke: {error}") from error
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._response.close()

    def until_done(self) -> ChatStream:
        """Read the rest of the stream; returns self."""
        for _ in self:
            pass
        return self

    content = property(lambda self: self._state.content)
    reasoning = property(lambda self: self._state.reasoning)
    tool_calls = property(lambda self: self._state.tool_calls)
    finish_reason = property(lambda self: self._state.finish_reason)
    usage = property(lambda self: self._state.usage)
    logprobs = property(lambda self: list(self._state.logprobs))

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from sending the request to the first reasoning or content text."""
        first = self._state.first_token_at
        return None if first is None else first - self.started

    @property
    def deltas(self) -> int:
        """How many text deltas came (reasoning and content)."""
        return self._state.deltas


class Client:
    """A synchronous client; see the module docstring.

    ``base_url`` may end with ``/v1`` or not. ``timeout`` bounds each wait for data (a long
    prefill counts), ``connect_timeout`` each connection attempt. ``transport`` is for tests
    (``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 2,
        retry_backoff: float = 0.25,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 (0: no retries), got {max_retries}")
        self.base_url = _base_url(base_url)
        self.model = model
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_headers(api_key, headers),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport -------------------------------------------------------------------------

    def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """Send, retrying failed connections; the response's body is not read yet."""
        request = self._http.build_request(method, path, json=body)
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.send(request, stream=True)
            except _RETRYABLE as error:
                if attempt == self.max_retries:
                    raise APIConnectionError(
                        f"cannot reach the server at {self.base_url} after "
                        f"{attempt + 1} attempts: {error}; is it running?"
                    ) from error
                time.sleep(self.retry_backoff * 2**attempt)
            except httpx.TimeoutException as error:
                raise APITimeoutError(f"{method} {path} timed out: {error}") from error
            except httpx.HTTPError as error:
                raise APIConnectionError(f"{method} {path} failed: {error}") from error
            else:
                if response.status_code >= 400:
                    try:
                        response.read()
                    finally:
                        response.close()
                    raise error_for_status(response.status_code, _decode(response))
                return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = self._send(method, path, body)
        try:
            response.read()
        except httpx.HTTPError as error:
            raise APIConnectionError(f"{method} {path}: the answer broke off: {error}") from error
        finally:
            response.close()
        return _decode(response)

    # -- API ---------------------------------------------------------------------------------

    def chat(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, **params: Any
    ) -> ChatCompletion:
        """A whole completion. ``params`` are OpenAI's fields (``temperature``,
        ``max_tokens``, ``tools``, ``include_reasoning``, ...)."""
        params.pop("stream", None)
        body = _body(messages, model or self.model, params)
        return ChatCompletion(self._json("POST", "/v1/chat/completions", body))

    def stream_chat(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, **params: Any
    ) -> ChatStream:
        """A streamed completion (usage included unless ``stream_options`` says otherwise)."""
        params.setdefault("stream_options", {"include_usage": True})
        body = _body(messages, model or self.model, {**params, "stream": True})
        started = time.perf_counter()
        return ChatStream(self._send("POST", "/v1/chat/completions", body), started)

    def count_tokens(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """``prompt_tokens``, ``max_context_tokens`` and ``margin`` for a conversation."""
        return self._json("POST", "/v1/tokenize", _body(messages, model or self.model, params))

    def models(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/models").get("data") or ())

    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/health"))


class AsyncChatStream:
    """`ChatStream` for `AsyncClient`: ``async for event in stream``."""

    def __init__(self, response: httpx.Response, started: float) -> None:
        self._response = response
        self._state = _StreamState()
        self._events: AsyncIterator[StreamEvent] | None = None
        self.started = started
        self.closed = False

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        if self._events is None:
            self._events = self._read()
        return self._events

    async def _read(self) -> AsyncIterator[StreamEvent]:
        data: list[str] = []
        try:
            async for line in self._response.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                    continue
                if line or not data:
                    continue
                payload, data = "\n".join(data), []
                if payload == "[DONE]":
                    return
                for event in _chunk_events(payload):
                    self._state.add(event)
                    yield event
        except httpx.TimeoutException as error:
            raise APITimeoutError(f"the stream stalled: {error}") from error
        except httpx.HTTPError as error:
            raise APIConnectionError(f"the stream broke: {error}") from error
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self._response.aclose()

    async def until_done(self) -> AsyncChatStream:
        async for _ in self:
            pass
        return self

    content = property(lambda self: self._state.content)
    reasoning = property(lambda self: self._state.reasoning)
    tool_calls = property(lambda self: self._state.tool_calls)
    finish_reason = property(lambda self: self._state.finish_reason)
    usage = property(lambda self: self._state.usage)
    logprobs = property(lambda self: list(self._state.logprobs))

    @property
    def time_to_first_token(self) -> float | None:
        first = self._state.first_token_at
        return None if first is None else first - self.started

    @property
    def deltas(self) -> int:
        return self._state.deltas


class AsyncClient:
    """The asynchronous twin of `Client`, with the same options and methods."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 2,
        retry_backoff: float = 0.25,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 (0: no retries), got {max_retries}")
        self.base_url = _base_url(base_url)
        self.model = model
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_headers(api_key, headers),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        request = self._http.build_request(method, path, json=body)
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.send(request, stream=True)
            except _RETRYABLE as error:
                if attempt == self.max_retries:
                    raise APIConnectionError(
                        f"cannot reach the server at {self.base_url} after "
                        f"{attempt + 1} attempts: {error}; is it running?"
                    ) from error
                await asyncio.sleep(self.retry_backoff * 2**attempt)
            except httpx.TimeoutException as error:
                raise APITimeoutError(f"{method} {path} timed out: {error}") from error
            except httpx.HTTPError as error:
                raise APIConnectionError(f"{method} {path} failed: {error}") from error
            else:
                if response.status_code >= 400:
                    try:
                        await response.aread()
                    finally:
                        await response.aclose()
                    raise error_for_status(response.status_code, _decode(response))
                return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _json(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = await self._send(method, path, body)
        try:
            await response.aread()
        except httpx.HTTPError as error:
            raise APIConnectionError(f"{method} {path}: the answer broke off: {error}") from error
        finally:
            await response.aclose()
        return _decode(response)

    async def chat(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, **params: Any
    ) -> ChatCompletion:
        params.pop("stream", None)
        body = _body(messages, model or self.model, params)
        return ChatCompletion(await self._json("POST", "/v1/chat/completions", body))

    async def stream_chat(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, **params: Any
    ) -> AsyncChatStream:
        params.setdefault("stream_options", {"include_usage": True})
        body = _body(messages, model or self.model, {**params, "stream": True})
        started = time.perf_counter()
        return AsyncChatStream(await self._send("POST", "/v1/chat/completions", body), started)

    async def count_tokens(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, **params: Any
    ) -> dict[str, Any]:
        return await self._json(
            "POST", "/v1/tokenize", _body(messages, model or self.model, params)
        )

    async def models(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/v1/models")).get("data") or ())

    async def health(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v1/health"))
