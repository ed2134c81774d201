"""Chat completions over a real uvicorn server (scripted model), with our api-client and the
official openai client: answers, streaming, reasoning fields, tools, sampling, logprobs."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import openai
import pytest

from mlx_harmony.api_client import Client, ContentDelta, Finish, ReasoningDelta, Usage
from mlx_harmony.controller.testing import Script

USER = [{"role": "user", "content": "Hello there"}]
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_time",
        "description": "The current time.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    },
}


def oai(url: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=kw.pop("api_key", "none"), **kw)


def test_an_answer_has_the_final_channel_as_content_and_the_analysis_as_reasoning(
    server: Any,
) -> None:
    with Client(server.url) as client:
        answer = client.chat(USER)
    assert answer.content == "You said: Hello there"
    assert answer.reasoning == "The user said 'Hello there'."
    assert answer.raw["choices"][0]["message"]["reasoning_content"] == answer.reasoning
    assert "<|" not in answer.content
    assert "<|" not in answer.reasoning
    assert answer.finish_reason == "stop"
    usage = answer.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 < usage.reasoning_tokens < usage.completion_tokens
    assert usage.prompt_tokens == len(server.generator.calls[-1].prompt_tokens)


def test_the_openai_client_reads_content_and_both_reasoning_fields(server: Any) -> None:
    response = oai(server.url).chat.completions.create(model="mlx-harmony-demo", messages=USER)
    message = response.choices[0].message
    assert message.content == "You said: Hello there"
    extra = message.model_extra or {}
    assert extra["reasoning"] == extra["reasoning_content"] == "The user said 'Hello there'."
    assert response.usage is not None
    assert response.usage.prompt_tokens_details is not None
    assert response.usage.completion_tokens_details.reasoning_tokens > 0


def test_include_reasoning_false_leaves_the_reasoning_out(server: Any) -> None:
    client = oai(server.url)
    response = client.chat.completions.create(
        model="mlx-harmony-demo", messages=USER, extra_body={"include_reasoning": False}
    )
    extra = response.choices[0].message.model_extra or {}
    assert response.choices[0].message.content == "You said: Hello there"
    assert "reasoning" not in extra
    assert "reasoning_content" not in extra
    chunks = list(
        client.chat.completions.create(
            model="mlx-harmony-demo",
            messages=USER,
            stream=True,
            extra_body={"include_reasoning": False},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any((d.model_extra or {}).get("reasoning") for d in deltas)
    assert "".join(d.content or "" for d in deltas) == "You said: Hello there"


def test_a_stream_sends_reasoning_deltas_then_content_deltas_then_usage(server: Any) -> None:
    stream = oai(server.url).chat.completions.create(
        model="mlx-harmony-demo",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    kinds: list[str] = []
    finish: list[str] = []
    usage = None
    text = {"reasoning": "", "content": ""}
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            reasoning = (delta.model_extra or {}).get("reasoning")
            if reasoning:
                kinds.append("reasoning")
                text["reasoning"] += reasoning
                assert (delta.model_extra or {}).get("reasoning_content") == reasoning
            if delta.content:
                kinds.append("content")
                text["content"] += delta.content
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert kinds.count("reasoning") >= 3
    assert kinds.count("content") >= 3
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # all reasoning first
    assert text == {"reasoning": "The user said 'Hello there'.", "content": "You said: Hello there"}
    assert finish == ["stop"]
    assert usage is not None
    assert usage.completion_tokens > kinds.count("content")


def test_tokens_are_streamed_as_they_are_generated_not_buffered(
    start_server: Any, echo: Any
) -> None:
    server = start_server(echo(hold_after=8))
    generator = server.generator
    with Client(server.url) as client, client.stream_chat(USER) as stream:
        events = iter(stream)
        first = next(e for e in events if isinstance(e, ReasoningDelta | ContentDelta))
        # The generation is held after 8 of its ~30 tokens: a buffering server would send
        # nothing until the end.
        assert generator.held
        assert generator.records[-1].tokens <= 8
        generator.release()
        rest = [e for e in events if isinstance(e, ReasoningDelta | ContentDelta)]
    assert first.text
    assert len(rest) >= 10


def test_our_client_stream_events_and_summary(server: Any) -> None:
    with Client(server.url) as client, client.stream_chat(USER) as stream:
        events = list(stream)
    assert isinstance(events[0], ReasoningDelta)
    assert [type(e) for e in events[-2:]] == [Finish, Usage]
    assert stream.content == "You said: Hello there"
    assert stream.reasoning == "The user said 'Hello there'."
    assert stream.finish_reason == "stop"
    assert stream.usage is not None
    assert stream.time_to_first_token is not None
    assert stream.deltas >= 6


def test_incoming_assistant_reasoning_is_accepted_under_both_names(server: Any) -> None:
    for name in ("reasoning", "reasoning_content"):
        messages = [
            {"role": "user", "content": "What time is it?"},
            {
                "role": "assistant",
                "content": None,
                name: f"Thinking as {name}.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_current_time", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        ]
        with Client(server.url) as client:
            answer = client.chat(messages, tools=[TIME_TOOL])
        prompt = server.generator.records[-1].prompt
        assert f"<|channel|>analysis<|message|>Thinking as {name}.<|end|>" in prompt
        assert answer.content == "The tool get_current_time said: 12:00"


def test_a_tool_call_round_trip_with_the_openai_client(server: Any) -> None:
    client = oai(server.url)
    messages: list[Any] = [{"role": "user", "content": "What time is it?"}]
    first = client.chat.completions.create(
        model="mlx-harmony-demo", messages=messages, tools=[TIME_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_current_time"
    assert call.function.arguments == '{"timezone": "UTC"}'
    assert "type get_current_time = " in server.generator.records[-1].prompt
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"time": "12:00"}'})
    second = client.chat.completions.create(
        model="mlx-harmony-demo", messages=messages, tools=[TIME_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == 'The tool get_current_time said: {"time": "12:00"}'
    prompt = server.generator.records[-1].prompt
    assert "<|start|>functions.get_current_time to=assistant" in prompt


def test_streamed_tool_calls_come_after_the_reasoning(server: Any) -> None:
    stream = oai(server.url).chat.completions.create(
        model="mlx-harmony-demo",
        messages=[{"role": "user", "content": "The time, please"}],
        tools=[TIME_TOOL],
        stream=True,
    )
    order: list[str] = []
    calls: list[Any] = []
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            if (choice.delta.model_extra or {}).get("reasoning"):
                order.append("reasoning")
            if choice.delta.tool_calls:
                order.append("tool_calls")
                calls.extend(choice.delta.tool_calls)
            finish = choice.finish_reason or finish
    assert order[0] == "reasoning"
    assert order[-1] == "tool_calls"
    assert finish == "tool_calls"
    assert [c.function.name for c in calls] == ["get_current_time"]
    assert calls[0].id
    assert calls[0].function.arguments == '{"timezone": "UTC"}'


def test_tool_names_that_are_not_identifiers_are_mapped_and_mapped_back(server: Any) -> None:
    tool = {"type": "function", "function": {"name": "clock.get-time", "parameters": {}}}
    client = oai(server.url)
    messages: list[Any] = [{"role": "user", "content": "What time is it?"}]
    first = client.chat.completions.create(
        model="mlx-harmony-demo", messages=messages, tools=[tool]
    )
    prompt = server.generator.records[-1].prompt
    assert "type clock_get_time = " in prompt
    assert "clock.get-time" not in prompt
    (call,) = first.choices[0].message.tool_calls or []
    assert call.function.name == "clock.get-time"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "noon"})
    second = client.chat.completions.create(
        model="mlx-harmony-demo", messages=messages, tools=[tool]
    )
    assert second.choices[0].message.content == "The tool clock_get_time said: noon"
    assert "to=functions.clock_get_time" in server.generator.records[-1].prompt


@pytest.mark.parametrize("stream", [False, True])
def test_tool_arguments_that_are_not_json_come_back_raw(server: Any, stream: bool) -> None:
    server.generator.add(
        Script.harmony(call=("functions.get_current_time", "{not json, 'at all'"), analysis="x")
    )
    with Client(server.url) as client:
        if stream:
            result: Any = client.stream_chat(USER, tools=[TIME_TOOL]).until_done()
        else:
            result = client.chat(USER, tools=[TIME_TOOL])
    assert result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("get_current_time", "{not json, 'at all'")
    ]


def test_sampling_fields_reach_the_generator(server: Any) -> None:
    with Client(server.url) as client:
        client.chat(
            USER,
            temperature=0.25,
            top_p=0.8,
            top_k=12,
            min_p=0.02,
            repetition_penalty=1.15,
            presence_penalty=0.3,
            frequency_penalty=0.4,
            seed=1234,
            logit_bias={"17": 2.5},
            stop=["HALT"],
            max_tokens=300,
            reasoning_effort="high",
        )
    call = server.generator.calls[-1]
    s = call.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.25, 0.8, 12, 0.02)
    assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty) == (1.15, 0.3, 0.4)
    assert (s.seed, s.logit_bias) == (1234, {17: 2.5})
    assert call.max_tokens == 300
    assert "HALT" in call.stop_strings
    assert "Reasoning: high" in call.prompt_text


def test_max_tokens_cuts_the_answer_with_finish_reason_length(server: Any) -> None:
    server.generator.add(Script.harmony("word " * 50, analysis="ok"))
    with Client(server.url) as client:
        answer = client.chat(USER, max_tokens=12)
    assert server.generator.calls[-1].max_tokens == 12
    assert answer.finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 12
    assert len(server.generator.calls) == 1  # an explicit max_tokens is never retried


def test_a_stop_string_ends_the_answer_before_it(server: Any) -> None:
    server.generator.add(Script.harmony("one two HALT three", analysis="ok"))
    with Client(server.url) as client:
        answer = client.chat(USER, stop="HALT")
    assert answer.content == "one two "
    assert answer.finish_reason == "stop"


def test_max_tokens_cap_limits_every_request(start_server: Any) -> None:
    server = start_server(max_tokens_cap=7)
    with Client(server.url) as client:
        client.chat(USER, max_tokens=1000)
        client.chat(USER)
    assert [c.max_tokens for c in server.generator.calls] == [7, 7]


def test_the_next_request_of_a_conversation_reuses_the_prompt_cache(server: Any) -> None:
    with Client(server.url) as client:
        first = client.chat(USER)
        messages = [*USER, first.message(), {"role": "user", "content": "And now?"}]
        second = client.chat(messages)
    assert first.usage is not None
    assert second.usage is not None
    assert first.usage.cached_tokens == 0
    # Everything up to the first answer is a prefix of the second prompt.
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 1


class LogprobGenerator:
    """Gives every token a log-probability of -0.25 and a runner-up at -2."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)

    def stream(self, **kwargs: Any) -> Any:
        wants = kwargs.pop("logprobs", False)
        vocab = mx.arange(201088)
        for event in self.generator.stream(**kwargs):
            if wants and event.token is not None:
                scores = mx.where(vocab == event.token, -0.25, -30.0)
                event.logprobs = mx.where(vocab == 33, -2.0, scores)
            yield event


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_cover_the_content_tokens(start_server: Any, echo: Any, stream: bool) -> None:
    server = start_server(LogprobGenerator(echo()))
    with Client(server.url) as client:
        if stream:
            result: Any = client.stream_chat(USER, logprobs=True, top_logprobs=2).until_done()
        else:
            result = client.chat(USER, logprobs=True, top_logprobs=2)
    entries = result.logprobs
    assert "".join(e["token"] for e in entries) == result.content == "You said: Hello there"
    for e in entries:
        assert e["logprob"] == pytest.approx(-0.25)
        assert [t["logprob"] for t in e["top_logprobs"]] == pytest.approx([-0.25, -2.0])
        assert e["top_logprobs"][0]["token"] == e["token"]
        assert bytes(e["bytes"]).decode() == e["token"]


def test_logprobs_are_null_unless_asked(server: Any) -> None:
    with Client(server.url) as client:
        answer = client.chat(USER)
    assert answer.raw["choices"][0]["logprobs"] is None


def test_tokenize_counts_the_prompt(server: Any) -> None:
    with Client(server.url) as client:
        counted = client.count_tokens(USER)
        answer = client.chat(USER)
    assert answer.usage is not None
    assert counted["prompt_tokens"] == answer.usage.prompt_tokens


def test_the_front_end_loop_runs_on_the_server_through_the_api_client(server: Any) -> None:
    from mlx_harmony.cli.frontend import ChatFrontend
    from mlx_harmony.cli.remote import ServerBackend
    from mlx_harmony.controller import ThinkingDelta, TurnDone

    with Client(server.url) as client:
        frontend = ChatFrontend(ServerBackend(client))
        first = list(frontend.handle("Hello there"))
        second = list(frontend.handle("And again"))
        tokens = list(frontend.handle("\\tokens"))
    assert any(isinstance(e, ThinkingDelta) for e in first)
    assert isinstance(first[-1], TurnDone)
    assert first[-1].result.final == "You said: Hello there"
    assert second[-1].result.final == "You said: And again"
    assert second[-1].result.generations[0].reused_prompt_tokens > 0
    assert "Context:" in tokens[0].text
