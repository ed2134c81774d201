"""Pure logic: OpenAI messages to turns, tool names, request checks. No server, no model."""

from __future__ import annotations

import pytest

from mlx_harmony.controller import PromptConfig
from mlx_harmony.harmony_format import Message, Role
from mlx_harmony.server import ToolNameMap, plan_chat
from mlx_harmony.server.chat.protocol import ChatCompletionRequest
from mlx_harmony.server.errors import APIError
from mlx_harmony.server.models import ModelEntry
from mlx_harmony.server.planning import SERVER_RETRY_POLICY, STRICT_RETRY_POLICY
from mlx_harmony.server.tool_names import is_harmony_name

ENTRY = ModelEntry("m", "m", PromptConfig(developer_instructions="Be brief."))


def plan(**body: object):
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return plan_chat(ChatCompletionRequest.model_validate(body), ENTRY)


def test_messages_split_into_earlier_turns_and_the_turn_to_answer() -> None:
    rp = plan(
        messages=[
            {"role": "system", "content": "Talk like a pirate."},
            {"role": "user", "content": "One"},
            {"role": "assistant", "content": "Uno", "reasoning_content": "Spanish."},
            {"role": "user", "content": [{"type": "text", "text": "Two"}]},
        ]
    )
    first, turn = rp.turn_plan.history[0], rp.turn_plan.turn
    assert first.user == Message.user("One")
    assert first.replies == (Message.analysis("Spanish."), Message.assistant("Uno"))
    assert turn.user == Message.user("Two")
    assert turn.replies == ()
    # The request's system message replaces the prompt config's instructions.
    assert rp.turn_plan.config.developer_instructions == "Talk like a pirate."


def test_without_a_system_message_the_prompt_configs_instructions_stay() -> None:
    assert plan().turn_plan.config.developer_instructions == "Be brief."


def test_tool_results_continue_the_turn_with_the_calls_harmony_name() -> None:
    rp = plan(
        messages=[
            {"role": "user", "content": "Time?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "reasoning": "Need the tool.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get-time", "arguments": '{"tz": "UTC"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        ],
        tools=[{"type": "function", "function": {"name": "get-time"}}],
    )
    replies = rp.turn_plan.turn.replies
    assert [m.channel for m in replies] == ["analysis", "commentary", "commentary", "commentary"]
    assert replies[1].text == "Let me look."
    assert replies[1].recipient is None
    assert replies[2].recipient == "functions.get_time"
    assert replies[2].text == '{"tz": "UTC"}'
    assert replies[3].role is Role.TOOL
    assert replies[3].name == "functions.get_time"
    assert [t.name for t in rp.turn_plan.function_tools] == ["get_time"]
    assert rp.names.to_openai("get_time") == "get-time"


def test_a_tool_result_for_an_unknown_call_id_is_a_400() -> None:
    with pytest.raises(APIError) as error:
        plan(
            messages=[
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "nope", "content": "1"},
            ]
        )
    assert error.value.status == 400
    assert error.value.param == "messages[1].tool_call_id"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("top_p", 0, "top_p must be in (0, 1]"),
        ("top_k", -3, "top_k must be"),
        ("presence_penalty", 3, "presence_penalty must be in [-2, 2]"),
        ("seed", -1, "seed must be"),
        ("logit_bias", {"abc": 1}, "logit_bias keys must be token ids"),
    ],
)
def test_out_of_range_sampling_values_name_the_field(
    field: str, value: object, needle: str
) -> None:
    with pytest.raises(APIError) as error:
        plan(**{field: value})
    assert error.value.status == 400
    assert error.value.param == field
    assert needle in error.value.message


def test_sampling_fields_and_limits_reach_the_config() -> None:
    rp = plan(
        temperature=0.3,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        seed=7,
        logit_bias={"42": -5},
        stop=["END", ""],
        max_completion_tokens=33,
        reasoning_effort="low",
    )
    params = rp.turn_plan.config.sampling_params()
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.3, 0.9, 40, 0.05)
    assert (params.repetition_penalty, params.presence_penalty) == (1.1, 0.5)
    assert (params.frequency_penalty, params.seed, params.logit_bias) == (0.25, 7, {42: -5.0})
    assert rp.turn_plan.config.end_token_strings == ["END"]
    assert rp.turn_plan.config.max_tokens == 33
    assert rp.turn_plan.config.reasoning_effort == "low"
    assert rp.turn_plan.policy is STRICT_RETRY_POLICY


def test_without_max_tokens_the_server_policy_allows_one_no_final_retry() -> None:
    assert plan().turn_plan.policy is SERVER_RETRY_POLICY
    assert SERVER_RETRY_POLICY.length_retries == 0
    assert SERVER_RETRY_POLICY.no_final_retries == 1


def test_max_tokens_cap_clamps_what_the_request_asks() -> None:
    body = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 500}
    )
    assert plan_chat(body, ENTRY, max_tokens_cap=20).turn_plan.config.max_tokens == 20
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}]})
    assert plan_chat(body, ENTRY, max_tokens_cap=20).turn_plan.config.max_tokens == 20


def test_tool_choice_none_hides_the_tools_and_required_asks_for_a_call() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert plan(tools=tools, tool_choice="none").turn_plan.function_tools == ()
    required = plan(tools=tools, tool_choice="required").turn_plan.config.developer_instructions
    assert required is not None
    assert "must call" in required
    assert required.startswith("Be brief.")
    named = plan(tools=tools, tool_choice={"type": "function", "function": {"name": "f"}})
    assert "functions.f" in (named.turn_plan.config.developer_instructions or "")
    with pytest.raises(APIError, match="not in tools"):
        plan(tools=tools, tool_choice={"type": "function", "function": {"name": "g"}})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"response_format": {"type": "grammar"}}, "response_format.type"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f"}},
                    {"type": "function", "function": {"name": "f"}},
                ]
            },
            "tools[1].function.name",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "system", "content": "only instructions"}]}, "messages"),
    ],
)
def test_requests_the_server_cannot_serve_are_400s_naming_the_param(
    body: dict[str, object], param: str
) -> None:
    with pytest.raises(APIError) as error:
        plan(**body)
    assert (error.value.status, error.value.param) == (400, param)


def test_tool_names_that_are_not_identifiers_get_safe_unique_names() -> None:
    names = ToolNameMap(["get_weather", "get-weather", "get.weather", "2fast", "météo", "a b"])
    harmony = {n: names.to_harmony(n) for n in names.renamed}
    assert names.to_harmony("get_weather") == "get_weather"  # valid names never change
    assert all(is_harmony_name(h) for h in harmony.values())
    assert len(set(harmony.values()) | {"get_weather"}) == len(harmony) + 1
    assert harmony["2fast"] == "fn_2fast"
    assert harmony["météo"] == "meteo"
    for original, safe in harmony.items():
        assert names.to_openai(safe) == original
    assert names.to_openai("unknown") == "unknown"
