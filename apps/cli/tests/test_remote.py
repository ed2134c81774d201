"""ServerBackend: the controller's ChatBackend over HTTP (MockTransport server)."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from mlx_harmony.api_client import Client
from mlx_harmony.chat_history import load_chat
from mlx_harmony.cli.frontend import ChatFrontend
from mlx_harmony.cli.remote import ServerBackend, request_body
from mlx_harmony.controller import (
    AnswerDelta,
    ChatBackend,
    ChatRequest,
    FinishReason,
    PromptConfig,
    StatsEvent,
    ThinkingDelta,
    ToolCallEvent,
    Turn,
    TurnDone,
    timing_line,
)
from mlx_harmony.harmony_format import FunctionTool, Message

USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 9,
    "total_tokens": 39,
    "prompt_tokens_details": {"cached_tokens": 20},
    "completion_tokens_details": {"reasoning_tokens": 4},
}


def stream_of(*deltas: dict[str, Any], finish: str = "stop") -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({"choices": [], "usage": USAGE})
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


class FakeServer:
    """Answers every chat request with the next body and records the requests."""

    def __init__(self, *bodies: bytes) -> None:
        self.bodies = list(bodies)
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if request.url.path == "/v1/tokenize":
            return httpx.Response(
                200, json={"prompt_tokens": 123, "max_context_tokens": 4096, "margin": 512}
            )
        return httpx.Response(200, content=self.bodies.pop(0))

    def backend(self, **kw: Any) -> ServerBackend:
        return ServerBackend(Client("http://s", transport=httpx.MockTransport(self)), **kw)


ANSWER = stream_of(
    {"reasoning": "Think", "reasoning_content": "Think"},
    {"reasoning": "ing.", "reasoning_content": "ing."},
    {"content": "Hel"},
    {"content": "lo."},
)


def test_it_is_a_chat_backend_and_maps_the_stream_onto_turn_events() -> None:
    server = FakeServer(ANSWER)
    backend = server.backend(model="m")
    assert isinstance(backend, ChatBackend)
    events = list(backend.stream_turn(ChatRequest(Turn(Message.user("Hi")))))
    assert events[:4] == [
        ThinkingDelta("Think"),
        ThinkingDelta("ing."),
        AnswerDelta("Hel"),
        AnswerDelta("lo."),
    ]
    stats, done = events[4], events[5]
    assert isinstance(stats, StatsEvent)
    assert isinstance(done, TurnDone)
    info = stats.info
    assert (info.prompt_tokens, info.completion_tokens, info.reused_prompt_tokens) == (30, 9, 20)
    result = done.result
    assert result.final == "Hello."
    assert result.analysis == "Thinking."
    assert result.finish_reason is FinishReason.STOP
    assert result.turn.replies == (Message.analysis("Thinking."), Message.assistant("Hello."))
    assert result.new_replies == result.turn.replies
    assert server.requests[0]["model"] == "m"


def test_a_speculating_servers_counts_reach_the_stats_line() -> None:
    usage = {
        **USAGE,
        "completion_tokens_details": {
            "reasoning_tokens": 4,
            "accepted_prediction_tokens": 5,
            "rejected_prediction_tokens": 2,
        },
    }
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "Hi."}, "finish_reason": "stop"}]},
        {"choices": [], "usage": usage},
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    backend = FakeServer(body.encode()).backend(model="m")
    events = list(backend.stream_turn(ChatRequest(Turn(Message.user("Hi")))))
    [stats] = [e for e in events if isinstance(e, StatsEvent)]
    assert (stats.info.draft_tokens, stats.info.accepted_draft_tokens) == (7, 5)
    [done] = [e for e in events if isinstance(e, TurnDone)]
    assert "drafts accepted 5/7 (71%)" in timing_line(done.result.timing())


def test_the_conversation_goes_out_as_openai_messages() -> None:
    history = (
        Turn(
            Message.user("Time?"),
            (
                Message.analysis("Use the tool."),
                Message.tool_call("functions.get_time", '{"tz": "UTC"}'),
                Message.tool_result("functions.get_time", "12:00"),
                Message.analysis("Got it."),
                Message.assistant("It is noon."),
            ),
        ),
    )
    config = PromptConfig(
        developer_instructions="Be brief.",
        temperature=0.2,
        seed=3,
        max_tokens=50,
        end_token_strings=["END"],
        reasoning_effort="high",
        logit_bias={"5": 1.5},
    )
    tools = (FunctionTool("get_time", "The time.", {"type": "object"}),)
    body = request_body(
        [*history, Turn(Message.user("Thanks"))], config=config, function_tools=tools
    )
    messages = body.pop("messages")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Time?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning": "Use the tool.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
        {"role": "assistant", "content": "It is noon.", "reasoning": "Got it."},
        {"role": "user", "content": "Thanks"},
    ]
    assert body == {
        "temperature": 0.2,
        "seed": 3,
        "logit_bias": {"5": 1.5},
        "max_tokens": 50,
        "reasoning_effort": "high",
        "stop": ["END"],
        "tools": [tools[0].to_openai()],
    }


def test_tool_calls_end_the_turn_and_come_back_as_tool_call_events() -> None:
    call = {
        "index": 0,
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_time", "arguments": "{}"},
    }
    server = FakeServer(
        stream_of({"reasoning": "Need it."}, {"tool_calls": [call]}, finish="tool_calls")
    )
    tools = (FunctionTool("get_time"),)
    events = list(
        server.backend().stream_turn(ChatRequest(Turn(Message.user("Time?")), function_tools=tools))
    )
    (event,) = [e for e in events if isinstance(e, ToolCallEvent)]
    assert event.call.recipient == "functions.get_time"
    assert not event.handled
    result = events[-1].result
    assert result.finish_reason is FinishReason.TOOL_CALLS
    assert result.final == ""
    assert result.tool_calls == (event.call,)
    assert result.turn.replies[-1] == event.call.to_message()
    assert server.requests[0]["tools"] == [tools[0].to_openai()]


def test_cancelling_closes_the_stream_and_ends_the_turn_cancelled() -> None:
    server = FakeServer(ANSWER)
    cancel = threading.Event()
    events = []
    for event in server.backend().stream_turn(ChatRequest(Turn(Message.user("Hi")), cancel=cancel)):
        events.append(event)
        if isinstance(event, ThinkingDelta):
            cancel.set()
    assert [e for e in events if isinstance(e, AnswerDelta)] == []
    assert events[-1].result.finish_reason is FinishReason.CANCELLED


def test_the_shared_front_end_loop_runs_unchanged_on_the_server_backend(tmp_path: Any) -> None:
    server = FakeServer(ANSWER, stream_of({"content": "Again."}))
    frontend = ChatFrontend(server.backend(), chat_path=tmp_path / "chat.json", autosave=True)
    first = list(frontend.handle("Hi"))
    assert isinstance(first[-1], TurnDone)
    assert first[-1].result.final == "Hello."
    second = list(frontend.handle("Once more"))
    assert second[-1].result.final == "Again."
    assert len(frontend.turns) == 2
    # The second request carried the first turn (its answer and reasoning) as history.
    sent = server.requests[1]["messages"]
    assert sent[:2] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "reasoning": "Thinking."},
    ]
    tokens = list(frontend.handle("\\tokens"))
    assert "123 of 4096" in tokens[0].text
    saved = load_chat(tmp_path / "chat.json")
    assert len(saved.branch()) >= 4


@pytest.mark.parametrize("turns", [()])
def test_counting_an_empty_conversation_asks_nothing(turns: tuple[Turn, ...]) -> None:
    server = FakeServer()
    count = server.backend().count_tokens(turns, config=PromptConfig())
    assert (count.prompt_tokens, server.requests) == (0, [])
