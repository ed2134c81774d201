"""The client over httpx's MockTransport: parsing, streaming, errors, retries, timeouts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from mlx_harmony.api_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ContentDelta,
    Finish,
    NotFoundError,
    ReasoningDelta,
    RequestTooLargeError,
    ServerError,
    ServiceUnavailableError,
    ToolCall,
    ToolCallDelta,
    UnprocessableEntityError,
    Usage,
)

USER = [{"role": "user", "content": "Hi"}]
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello!",
                "reasoning": "Greet back.",
                "reasoning_content": "Greet back.",
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 8},
        "completion_tokens_details": {"reasoning_tokens": 3},
    },
}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}],
    }


def sse(*chunks: Any, done: bool = True) -> bytes:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning": "Think", "reasoning_content": "Think"}),
    chunk({"reasoning": "ing.", "reasoning_content": "ing."}),
    chunk({"content": "Hel"}, logprobs={"content": [{"token": "Hel", "logprob": -0.1}]}),
    chunk({"content": "lo"}),
    chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
    chunk({}, "tool_calls"),
    {"id": "c", "choices": [], "usage": COMPLETION["usage"]},
)


class Recorder:
    """A MockTransport handler that answers from a list and records the requests."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[], Any]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer()
        return answer

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)


def client(recorder: Recorder, **kw: Any) -> Client:
    kw.setdefault("retry_backoff", 0.0)
    return Client("http://server:9/v1/", transport=httpx.MockTransport(recorder), **kw)


def test_chat_sends_openai_fields_and_reads_the_answer() -> None:
    rec = Recorder(httpx.Response(200, json=COMPLETION))
    with client(rec, api_key="k", model="m") as c:
        answer = c.chat(USER, temperature=0.5, max_tokens=None, include_reasoning=True)
    request = rec.requests[0]
    assert str(request.url) == "http://server:9/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer k"
    assert rec.body() == {
        "messages": USER,
        "model": "m",
        "temperature": 0.5,
        "include_reasoning": True,
    }
    assert (answer.content, answer.reasoning, answer.finish_reason) == (
        "Hello!",
        "Greet back.",
        "stop",
    )
    assert answer.usage == Usage(10, 5, 15, cached_tokens=8, reasoning_tokens=3)
    assert answer.message()["content"] == "Hello!"


def test_a_stream_yields_typed_events_and_joins_them() -> None:
    rec = Recorder(httpx.Response(200, content=STREAM))
    with client(rec) as c, c.stream_chat(USER) as stream:
        events = list(stream)
    assert rec.body()["stream"] is True
    assert rec.body()["stream_options"] == {"include_usage": True}
    assert events[:2] == [ReasoningDelta("Think"), ReasoningDelta("ing.")]  # not twice
    assert events[2] == ContentDelta("Hel", ({"token": "Hel", "logprob": -0.1},))
    assert events[4] == ToolCallDelta(0, "call_1", "f", "")
    assert isinstance(events[-2], Finish)
    assert isinstance(events[-1], Usage)
    assert stream.reasoning == "Thinking."
    assert stream.content == "Hello"
    assert stream.tool_calls == (ToolCall("call_1", "f", '{"a": 1}'),)
    assert stream.finish_reason == "tool_calls"
    assert stream.deltas == 4
    assert stream.logprobs == [{"token": "Hel", "logprob": -0.1}]
    assert stream.time_to_first_token is not None
    assert stream.closed


def test_an_error_event_in_a_stream_raises() -> None:
    body = sse(
        chunk({"content": "a"}),
        {"error": {"message": "the turn failed", "type": "server_error"}},
    )
    with client(Recorder(httpx.Response(200, content=body))) as c:
        stream = c.stream_chat(USER)
        with pytest.raises(ServerError, match="the turn failed"):
            list(stream)
    assert stream.content == "a"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (413, RequestTooLargeError),
        (422, UnprocessableEntityError),
        (503, ServiceUnavailableError),
        (500, ServerError),
        (418, APIStatusError),
    ],
)
def test_error_statuses_become_error_classes_with_the_servers_fields(
    status: int, cls: type[APIStatusError]
) -> None:
    error = {"message": "top_p must be in (0, 1]", "type": "t", "param": "top_p", "code": "c"}
    rec = Recorder(httpx.Response(status, json={"error": error}))
    with client(rec) as c:
        with pytest.raises(cls) as raised:
            c.chat(USER)
        with pytest.raises(cls):
            c.stream_chat(USER)
    assert type(raised.value) is cls
    assert raised.value.status_code == status
    assert (raised.value.message, raised.value.param, raised.value.code) == (
        "top_p must be in (0, 1]",
        "top_p",
        "c",
    )
    assert "top_p must be in (0, 1]" in str(raised.value)


def test_an_error_that_is_not_json_keeps_its_text() -> None:
    with (
        client(Recorder(httpx.Response(502, text="Bad Gateway"))) as c,
        pytest.raises(ServerError) as raised,
    ):
        c.health()
    assert raised.value.message == "Bad Gateway"


def test_failed_connections_are_retried_before_the_first_byte() -> None:
    refused = httpx.ConnectError("refused")
    rec = Recorder(refused, refused, httpx.Response(200, json=COMPLETION))
    with client(rec, max_retries=2) as c:
        assert c.chat(USER).content == "Hello!"
    assert len(rec.requests) == 3


def test_retries_run_out_with_a_connection_error_that_says_so() -> None:
    rec = Recorder(httpx.ConnectError("refused"))
    with client(rec, max_retries=1) as c, pytest.raises(APIConnectionError, match="after 2"):
        c.chat(USER)
    assert len(rec.requests) == 2


def test_nothing_is_retried_once_the_server_has_answered() -> None:
    def broken() -> Iterator[bytes]:
        yield sse(chunk({"content": "par"}), done=False)
        raise httpx.ReadError("connection reset")

    rec = Recorder(lambda: httpx.Response(200, content=broken()))
    with client(rec, max_retries=3) as c:
        stream = c.stream_chat(USER)
        with pytest.raises(APIConnectionError, match="the stream broke"):
            list(stream)
    assert len(rec.requests) == 1
    assert stream.content == "par"


def test_a_timeout_is_an_api_timeout_error() -> None:
    rec = Recorder(httpx.ReadTimeout("slow"))
    with client(rec) as c, pytest.raises(APITimeoutError):
        c.chat(USER)
    assert len(rec.requests) == 1


def test_models_health_and_token_counts() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})
        if path == "/v1/health":
            return httpx.Response(200, json={"model_loaded": True})
        return httpx.Response(200, json={"prompt_tokens": 7, "max_context_tokens": None})

    with Client("http://s", transport=httpx.MockTransport(answer)) as c:
        assert c.models() == [{"id": "m"}]
        assert c.health() == {"model_loaded": True}
        assert c.count_tokens(USER)["prompt_tokens"] == 7


def test_the_async_client_streams_and_maps_errors_the_same_way() -> None:
    async def main() -> tuple[Any, Any, int]:
        rec = Recorder(
            httpx.ConnectError("refused"),
            httpx.Response(200, content=STREAM),
            httpx.Response(401, json={"error": {"message": "bad key", "type": "auth"}}),
        )
        transport = httpx.MockTransport(rec)
        async with AsyncClient("http://s", transport=transport, retry_backoff=0) as c:
            stream = await c.stream_chat(USER)
            async with stream:
                events = [e async for e in stream]
            with pytest.raises(AuthenticationError):
                await c.chat(USER)
        return events, stream, len(rec.requests)

    events, stream, requests = asyncio.run(main())
    assert requests == 3  # one refused connection, retried
    assert events[0] == ReasoningDelta("Think")
    assert stream.content == "Hello"
    assert stream.tool_calls[0].arguments == '{"a": 1}'
    assert stream.usage.cached_tokens == 8


def test_importing_the_client_imports_neither_mlx_nor_the_controller() -> None:
    code = (
        "import sys, mlx_harmony.api_client as c; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm') "
        "or m.startswith('mlx_harmony.controller')]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_usage_carries_the_servers_speculation_counts() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 4,
            "completion_tokens": 9,
            "total_tokens": 13,
            "completion_tokens_details": {
                "accepted_prediction_tokens": 6,
                "rejected_prediction_tokens": 3,
            },
        }
    )
    assert usage is not None
    assert (usage.accepted_prediction_tokens, usage.rejected_prediction_tokens) == (6, 3)
    plain = Usage.from_openai({"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13})
    assert plain is not None
    assert (plain.accepted_prediction_tokens, plain.rejected_prediction_tokens) == (0, 0)
