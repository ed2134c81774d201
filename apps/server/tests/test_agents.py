"""Agent frameworks with their defaults against the server (scripted model): openai-agents over
its Chat Completions and its Responses model, and langchain-openai's ``bind_tools`` round trip
(chat and Responses, where the reasoning shows through ``summary``)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

MODEL = "mlx-harmony-demo"


@pytest.fixture(autouse=True)
def _no_tracing() -> None:
    set_tracing_disabled(True)  # tracing would post to OpenAI


@function_tool
def get_current_time(timezone: str) -> str:
    """The current time in a timezone."""
    return f"12:00 in {timezone}"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_an_openai_agent_calls_the_tool_and_answers(server: Any, api: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    model = (
        OpenAIChatCompletionsModel(MODEL, client)
        if api == "chat"
        else OpenAIResponsesModel(MODEL, client)
    )
    agent = Agent(
        name="clock",
        instructions="Answer briefly.",
        tools=[get_current_time],
        model=model,
        model_settings=ModelSettings(max_tokens=200),
    )
    result = asyncio.run(Runner.run(agent, "What time is it?"))
    assert result.final_output == "The tool get_current_time said: 12:00 in UTC"
    kinds = [item.type for item in result.new_items]
    assert "tool_call_item" in kinds
    assert "tool_call_output_item" in kinds
    assert len(server.generator.records) == 2


@tool
def clock(timezone: str) -> str:
    """The current time in a timezone."""
    return f"09:30 in {timezone}"


@pytest.mark.parametrize("responses", [False, True])
def test_langchain_bind_tools_round_trip(server: Any, responses: bool) -> None:
    extra: dict[str, Any] = (
        {"use_responses_api": True, "reasoning": {"effort": "low", "summary": "auto"}}
        if responses
        else {}
    )
    llm = ChatOpenAI(
        model=MODEL, base_url=f"{server.url}/v1", api_key="none", max_retries=0, **extra
    ).bind_tools([clock])
    question = HumanMessage("What time is it?")
    first = llm.invoke([question])
    (call,) = first.tool_calls
    assert call["name"] == "clock"
    assert call["args"] == {"timezone": "UTC"}
    answer = llm.invoke(
        [question, first, ToolMessage(clock.invoke(call["args"]), tool_call_id=call["id"])]
    )
    assert answer.text == "The tool clock said: 09:30 in UTC"
    if responses:
        reasoning = [block for block in first.content_blocks if block["type"] == "reasoning"]
        assert [block.get("reasoning") for block in reasoning] == [
            "The user wants the time; I call the tool."
        ]
