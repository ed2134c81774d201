"""The Responses API over a real uvicorn server (scripted model) with the official openai
client: output items, streaming events (raw and through the stream helper), previous_response_id
chains, function tool round trips, reasoning items sent back, instructions and effort in the
prompt, and the errors."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony.controller.testing import Script
from mlx_harmony.harmony_format import Message

TIME_TOOL = {
    "type": "function",
    "name": "get_current_time",
    "description": "The current time.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
}
MODEL = "mlx-harmony-demo"


def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def prompt_of(server: Any) -> str:
    return server.generator.records[-1].prompt


def test_an_answer_is_a_reasoning_item_then_a_message(server: Any) -> None:
    response = oai(server.url).responses.create(model=MODEL, input="Hello there")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning, message = response.output
    assert reasoning.content is not None
    assert [c.text for c in reasoning.content] == ["The user said 'Hello there'."]
    assert reasoning.summary == []
    assert message.role == "assistant"
    assert message.phase == "final_answer"
    assert [(c.type, c.text) for c in message.content] == [("output_text", "You said: Hello there")]
    assert response.output_text == "You said: Hello there"
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == len(server.generator.calls[-1].prompt_tokens)
    assert usage.input_tokens_details.cached_tokens == 0
    assert 0 < usage.output_tokens_details.reasoning_tokens < usage.output_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert "<|start|>user<|message|>Hello there<|end|>" in prompt_of(server)


def test_a_raw_stream_sends_the_responses_events_in_order(server: Any) -> None:
    events = list(oai(server.url).responses.create(model=MODEL, input="Hello there", stream=True))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-1] == "response.completed"
    reasoning = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    text = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(reasoning) >= 3
    assert len(text) >= 3
    assert types.index("response.reasoning_text.done") < types.index("response.output_text.delta")
    (reasoning_done,) = [e for e in events if e.type == "response.reasoning_text.done"]
    (text_done,) = [e for e in events if e.type == "response.output_text.done"]
    assert reasoning_done.text == "".join(reasoning) == "The user said 'Hello there'."
    assert text_done.text == "".join(text) == "You said: Hello there"
    assert types.count("response.output_item.added") == types.count("response.output_item.done")
    assert types.count("response.content_part.done") == 2
    created, completed = events[0], events[-1]
    assert created.response.status == "in_progress"
    assert created.response.output == []
    assert completed.response.id == created.response.id
    done_items = [e.item for e in events if e.type == "response.output_item.done"]
    assert [i.model_dump() for i in completed.response.output] == [
        i.model_dump() for i in done_items
    ]
    assert completed.response.output_text == "You said: Hello there"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens > len(text)


def test_the_stream_helper_accumulates_text_and_the_final_response(server: Any) -> None:
    client = oai(server.url)
    with client.responses.stream(model=MODEL, input="Hello there") as stream:
        snapshots = [e.snapshot for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert snapshots[-1] == "You said: Hello there"
    assert all(b.startswith(a) for a, b in itertools.pairwise(snapshots))
    assert final.output_text == "You said: Hello there"
    assert final.status == "completed"


def test_the_stream_helper_reads_a_streamed_function_call(server: Any) -> None:
    client = oai(server.url)
    with client.responses.stream(
        model=MODEL, input="What time is it?", tools=[TIME_TOOL]
    ) as stream:
        argument_snapshots = [
            e.snapshot for e in stream if e.type == "response.function_call_arguments.delta"
        ]
        final = stream.get_final_response()
    assert argument_snapshots == ['{"timezone": "UTC"}']
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == [("get_current_time", '{"timezone": "UTC"}')]
    assert calls[0].call_id.startswith("call_")
    assert final.output[0].type == "reasoning"


def test_previous_response_id_continues_the_stored_conversation(server: Any) -> None:
    client = oai(server.url)
    first = client.responses.create(model=MODEL, input="Hello there")
    second = client.responses.create(model=MODEL, input="And again", previous_response_id=first.id)
    prompt = prompt_of(server)
    assert second.output_text == "You said: And again"
    assert second.previous_response_id == first.id
    assert "<|start|>user<|message|>Hello there<|end|>" in prompt
    assert "<|channel|>final<|message|>You said: Hello there<|end|>" in prompt
    # The reasoning of a finished turn is dropped from the prompt, as gpt-oss expects.
    assert "The user said 'Hello there'." not in prompt
    assert second.usage is not None
    assert first.usage is not None
    assert second.usage.input_tokens_details.cached_tokens > 0
    third = client.responses.create(model=MODEL, input="Once more", previous_response_id=second.id)
    prompt = prompt_of(server)
    assert third.output_text == "You said: Once more"
    assert prompt.index("Hello there") < prompt.index("And again") < prompt.index("Once more")


def test_get_and_delete_a_stored_response(server: Any) -> None:
    client = oai(server.url)
    created = client.responses.create(model=MODEL, input="Hello there", metadata={"k": "v"})
    fetched = client.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    assert fetched.metadata == {"k": "v"}
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(created.id)
    assert created.id in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="x", previous_response_id=created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_store_false_keeps_nothing(server: Any) -> None:
    client = oai(server.url)
    response = client.responses.create(model=MODEL, input="Hello there", store=False)
    assert response.output_text == "You said: Hello there"
    assert len(server.app.state.responses.store) == 0
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_the_store_is_bounded_least_recently_used_out(start_server: Any) -> None:
    server = start_server(response_store_size=2)
    client = oai(server.url)
    ids = [client.responses.create(model=MODEL, input=f"Hi {n}").id for n in range(3)]
    assert len(server.app.state.responses.store) == 2
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL, input="x", previous_response_id=ids[0])
    error = caught.value
    assert ids[0] in error.message
    assert "in memory" in error.message
    assert "--response-store-size" in error.message
    assert error.body["param"] == "previous_response_id"  # type: ignore[index]
    assert client.responses.retrieve(ids[2]).id == ids[2]


def test_a_function_call_round_trip_through_previous_response_id(server: Any) -> None:
    client = oai(server.url)
    first = client.responses.create(model=MODEL, input="What time is it?", tools=[TIME_TOOL])
    assert "type get_current_time = " in prompt_of(server)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert (call.name, call.arguments) == ("get_current_time", '{"timezone": "UTC"}')
    assert first.output_text == ""
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "12:00"}],
        tools=[TIME_TOOL],
    )
    assert second.output_text == "The tool get_current_time said: 12:00"
    prompt = prompt_of(server)
    assert "to=functions.get_current_time<|channel|>commentary" in prompt
    assert "<|start|>functions.get_current_time to=assistant" in prompt
    # The turn is still in progress, so its reasoning stays in the prompt.
    assert "<|channel|>analysis<|message|>The user wants the time; I call the tool.<|end|>" in (
        prompt
    )


def test_a_function_call_round_trip_with_the_items_sent_back(server: Any) -> None:
    client = oai(server.url)
    items: list[Any] = [{"role": "user", "content": "What time is it?"}]
    first = client.responses.create(model=MODEL, input=items, tools=[TIME_TOOL], store=False)
    items += [item.model_dump(exclude_none=True) for item in first.output]
    (call,) = [item for item in first.output if item.type == "function_call"]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "noon"})
    second = client.responses.create(model=MODEL, input=items, tools=[TIME_TOOL], store=False)
    assert second.output_text == "The tool get_current_time said: noon"
    assert "<|channel|>analysis<|message|>The user wants the time" in prompt_of(server)


def test_reasoning_items_sent_back_are_the_analysis_of_their_turn(server: Any) -> None:
    items = [
        {"role": "user", "content": "What time is it?"},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "I should ask the clock."}],
        },
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "get_current_time",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "09:30"},
    ]
    response = oai(server.url).responses.create(model=MODEL, input=items, tools=[TIME_TOOL])
    prompt = prompt_of(server)
    assert "<|channel|>analysis<|message|>I should ask the clock.<|end|>" in prompt
    assert prompt.index("I should ask the clock.") < prompt.index("to=functions.get_current_time")
    assert response.output_text == "The tool get_current_time said: 09:30"


def test_reasoning_of_an_earlier_turn_is_left_out(server: Any) -> None:
    items = [
        {"role": "user", "content": "First question"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "R1"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "First answer"}]},
        {"role": "user", "content": "Second question"},
    ]
    oai(server.url).responses.create(model=MODEL, input=items)
    prompt = prompt_of(server)
    assert "<|channel|>final<|message|>First answer<|end|>" in prompt
    assert "R1" not in prompt


def test_a_preamble_is_a_commentary_message_before_the_call(server: Any) -> None:
    server.generator.add(
        Script.from_messages(
            [
                Message.analysis("Need the clock."),
                Message.assistant("Let me check the clock.", channel="commentary"),
                Message.tool_call("functions.get_current_time", "{}"),
            ]
        )
    )
    client = oai(server.url)
    first = client.responses.create(model=MODEL, input="Time?", tools=[TIME_TOOL])
    assert [item.type for item in first.output] == ["reasoning", "message", "function_call"]
    preamble = first.output[1]
    assert preamble.phase == "commentary"
    assert preamble.content[0].text == "Let me check the clock."
    call = first.output[2]
    client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "now"}],
        tools=[TIME_TOOL],
    )
    prompt = prompt_of(server)
    assert "<|channel|>commentary<|message|>Let me check the clock.<|end|>" in prompt
    assert prompt.index("Let me check the clock.") < prompt.index("to=functions.get_current_time")


def test_instructions_and_effort_reach_the_prompt_and_are_not_carried_over(server: Any) -> None:
    client = oai(server.url)
    first = client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": "Hello there"},
        ],
        instructions="Speak like a pirate.",
        reasoning={"effort": "high"},
    )
    prompt = prompt_of(server)
    assert "Reasoning: high" in prompt
    developer = prompt[prompt.index("<|start|>developer") :]
    developer = developer[: developer.index("<|end|>")]
    assert developer.index("Speak like a pirate.") < developer.index("Answer briefly.")
    assert first.instructions == "Speak like a pirate."
    assert first.reasoning is not None
    assert first.reasoning.effort == "high"
    client.responses.create(model=MODEL, input="More", previous_response_id=first.id)
    prompt = prompt_of(server)
    assert "Speak like a pirate." not in prompt  # instructions belong to one response
    assert "Answer briefly." in prompt  # a developer input item is part of the conversation
    assert "Reasoning: medium" in prompt


def test_sampling_fields_and_max_output_tokens_reach_the_generator(server: Any) -> None:
    oai(server.url).responses.create(
        model=MODEL, input="Hello there", temperature=0.25, top_p=0.8, max_output_tokens=300
    )
    call = server.generator.calls[-1]
    assert (call.sampling.temperature, call.sampling.top_p) == (0.25, 0.8)
    assert call.max_tokens == 300


@pytest.mark.parametrize("stream", [False, True])
def test_max_output_tokens_cuts_the_response_as_incomplete(server: Any, stream: bool) -> None:
    server.generator.add(Script.harmony("word " * 50, analysis="ok"))
    client = oai(server.url)
    if stream:
        events = list(
            client.responses.create(
                model=MODEL, input="Hello there", max_output_tokens=12, stream=True
            )
        )
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
    else:
        response = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=12)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[-1].status == "incomplete"
    assert response.usage is not None
    assert response.usage.output_tokens == 12
    assert len(server.generator.calls) == 1


def test_tool_choice_none_leaves_the_tools_out_and_required_asks_for_a_call(server: Any) -> None:
    client = oai(server.url)
    client.responses.create(model=MODEL, input="Hi", tools=[TIME_TOOL], tool_choice="none")
    assert "get_current_time" not in prompt_of(server)
    client.responses.create(model=MODEL, input="Hi", tools=[TIME_TOOL], tool_choice="required")
    assert "You must call one of the functions" in prompt_of(server)
    response = client.responses.create(
        model=MODEL,
        input="Hi",
        tools=[TIME_TOOL],
        tool_choice={"type": "function", "name": "get_current_time"},
    )
    assert "call the function functions.get_current_time now" in prompt_of(server)
    assert response.tool_choice.name == "get_current_time"  # type: ignore[union-attr]


def test_a_json_schema_text_format_asks_for_json(server: Any) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    oai(server.url).responses.create(
        model=MODEL,
        input="Hello there",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema}},
    )
    assert json.dumps(schema) in prompt_of(server)


def test_tool_names_that_are_not_identifiers_are_mapped_back(server: Any) -> None:
    tool = {"type": "function", "name": "clock.get-time", "parameters": {}}
    client = oai(server.url)
    first = client.responses.create(model=MODEL, input="What time is it?", tools=[tool])
    assert "type clock_get_time = " in prompt_of(server)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "clock.get-time"
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "noon"}],
        tools=[tool],
    )
    assert second.output_text == "The tool clock_get_time said: noon"


# -- errors -------------------------------------------------------------------------------------


def _error(excinfo: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = excinfo.value.body
    assert isinstance(body, dict)
    assert {"message", "type", "param", "code"} <= set(body)
    return body


def test_an_unknown_previous_response_id_is_a_404_naming_it(server: Any) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oai(server.url).responses.create(model=MODEL, input="Hi", previous_response_id="resp_nope")
    body = _error(caught)
    assert "'resp_nope'" in body["message"]
    assert "kept in memory" in body["message"]
    assert body["code"] == "previous_response_not_found"
    assert not server.generator.calls


@pytest.mark.parametrize("kind", ["web_search", "file_search", "code_interpreter", "mcp"])
def test_a_hosted_tool_is_left_out_with_a_warning_header(server: Any, kind: str) -> None:
    raw = oai(server.url).responses.with_raw_response.create(
        model=MODEL,
        input="Hi",
        tools=[TIME_TOOL, {"type": kind}],  # type: ignore[list-item]
    )
    assert raw.http_response.status_code == 200
    (warning,) = raw.headers.get_list("x-mlx-harmony-warning")
    assert f"tools[1] is a hosted {kind!r} tool" in warning
    assert "left out of the prompt" in warning
    assert raw.parse().status == "completed"
    assert "get_current_time" in prompt_of(server)
    assert kind not in prompt_of(server)


@pytest.mark.parametrize(
    ("items", "status", "param", "words"),
    [
        ([{"type": "item_reference", "id": "msg_1"}], 400, "input[0].type", "'item_reference'"),
        (
            [{"role": "user", "content": "Hi"}, {"type": "function_call_output", "output": "x"}],
            400,
            "input[1].call_id",
            "Field required",
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                {"type": "function_call_output", "call_id": "c9", "output": "x"},
            ],
            400,
            "input[1].call_id",
            "'c9'",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "http://x/y.png"},
                    ],
                }
            ],
            400,
            "input[0].content[1].type",
            "'input_image'",
        ),
        ([{"role": "assistant", "content": "Hello"}], 400, "input", "no user message"),
        ([{"role": "robot", "content": "Hello"}], 400, "input[0].role", "user"),
        ([], 400, "input", "input is empty"),
    ],
)
def test_a_bad_input_item_is_an_error_naming_it(
    server: Any, items: list[Any], status: int, param: str, words: str
) -> None:
    response = httpx.post(
        f"{server.url}/v1/responses", json={"model": MODEL, "input": items}, timeout=30
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert not server.generator.calls


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"reasoning": {"effort": "minimal"}}, "reasoning.effort", "low, medium or high"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "'web_search_preview'"),
        ({"tool_choice": "sometimes"}, "tool_choice", "'sometimes'"),
        ({"tool_choice": "required"}, "tool_choice", "no tools"),
        ({"top_p": 0}, "top_p", "top_p"),
        ({"background": True}, "background", "background"),
        ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "'yaml'"),
        ({"tools": [TIME_TOOL, TIME_TOOL]}, "tools[1].name", "already declared"),
    ],
)
def test_unsupported_or_invalid_fields_are_a_400_naming_them(
    server: Any, fields: dict[str, Any], param: str, words: str
) -> None:
    body = {"model": MODEL, "input": "Hi", **fields}
    response = httpx.post(f"{server.url}/v1/responses", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]


def test_a_prompt_longer_than_the_context_is_a_400_before_streaming(
    start_server: Any, echo: Any
) -> None:
    server = start_server(echo(context_length=64))
    with pytest.raises(openai.BadRequestError) as caught:
        oai(server.url).responses.create(model=MODEL, input="word " * 200, stream=True)
    body = _error(caught)
    assert body["code"] == "context_length_exceeded"
    assert body["param"] == "input"


def test_a_client_that_leaves_mid_stream_cancels_the_turn(
    start_server: Any, echo: Any, wait_for: Any
) -> None:
    server = start_server(echo(hold_after=20))
    server.generator.add(Script.harmony("word " * 400, analysis="thinking"))
    body = {"model": MODEL, "input": "Hello there", "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/responses", json=body, timeout=30) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("event: response.output_text.delta"):
                seen += 1
                if seen == 3:
                    break
    # The request ends (and is logged as cancelled) while the generation is still held.
    assert wait_for(lambda: any("cancelled" in line for line in server.log_lines()))
    server.generator.release()
    worker = server.worker
    assert wait_for(lambda: worker.stats.cancelled == 1)
    record = server.generator.records[-1]
    assert record.cancelled
    assert record.tokens < 400
    assert len(server.app.state.responses.store) == 0
    assert wait_for(lambda: any("cancelled" in line for line in server.log_lines()))


class FailingGenerator:
    """The echo model, failing after a few tokens of its reply."""

    def __init__(self, generator: Any, after: int) -> None:
        self.generator = generator
        self.after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)

    def stream(self, **kwargs: Any) -> Any:
        for n, event in enumerate(self.generator.stream(**kwargs)):
            if n == self.after:
                raise RuntimeError("the accelerator caught fire")
            yield event


def test_a_turn_that_fails_mid_stream_ends_with_response_failed(
    start_server: Any, echo: Any
) -> None:
    server = start_server(FailingGenerator(echo(), after=12))
    events = list(oai(server.url).responses.create(model=MODEL, input="Hello there", stream=True))
    types = [e.type for e in events]
    assert "response.reasoning_text.delta" in types
    assert types[-1] == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None
    assert "the accelerator caught fire" in failed.error.message
    assert [item.type for item in failed.output] == ["reasoning"]
    assert len(server.app.state.responses.store) == 0


def test_the_request_log_counts_a_response(server: Any, wait_for: Any) -> None:
    response = oai(server.url).responses.create(model=MODEL, input="Hello there")
    assert response.usage is not None
    expected = (
        f"POST /v1/responses 200 prompt={response.usage.input_tokens} "
        f"completion={response.usage.output_tokens}"
    )
    assert wait_for(lambda: any(expected in line for line in server.log_lines()))


def test_an_api_key_guards_the_responses_routes(start_server: Any) -> None:
    server = start_server(api_key="secret")
    with pytest.raises(openai.AuthenticationError):
        oai(server.url).responses.create(model=MODEL, input="Hi")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="secret", max_retries=0)
    created = client.responses.create(model=MODEL, input="Hello there")
    assert created.output_text == "You said: Hello there"
    assert httpx.get(f"{server.url}/v1/responses/{created.id}").status_code == 401
