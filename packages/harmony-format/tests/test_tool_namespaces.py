"""Function tools in a namespace of their own (``namespace multi_agent_v1 { ... }``)."""

from __future__ import annotations

import pytest

from mlx_harmony.harmony_format import DeveloperConfig, FunctionTool, Message, render_prompt_text

CLOSE = FunctionTool(
    "close_agent",
    "Close an agent.",
    {"type": "object", "properties": {"id": {"type": "string"}}},
    namespace="multi_agent_v1",
    namespace_description="Tools for sub-agents.",
)
RUN = FunctionTool("exec_command", "Run a command.", {"type": "object"})


def test_a_namespaced_tool_renders_in_its_own_namespace_after_functions() -> None:
    text = render_prompt_text(
        [Message.user("hi")], developer=DeveloperConfig("Be brief.", (CLOSE, RUN))
    )
    functions = text.index("namespace functions {")
    space = text.index("// Tools for sub-agents.\nnamespace multi_agent_v1 {")
    assert functions < text.index("type exec_command") < space
    assert space < text.index("type close_agent = (_: {\nid?: string,\n}) => any;")
    assert text.index("} // namespace multi_agent_v1") > space


def test_a_developer_config_with_namespaces_round_trips_through_openai_harmony() -> None:
    config = DeveloperConfig("Be brief.", (RUN, CLOSE))
    assert DeveloperConfig.from_harmony(config.to_harmony()) == config


def test_the_same_name_in_two_namespaces_is_allowed_but_not_twice_in_one() -> None:
    twin = FunctionTool("close_agent", "Close.", namespace="functions")
    assert len(DeveloperConfig(None, (CLOSE, twin)).tools) == 2
    with pytest.raises(ValueError, match=r"multi_agent_v1\.close_agent"):
        DeveloperConfig(None, (CLOSE, CLOSE))


def test_a_namespace_that_is_not_an_identifier_is_refused() -> None:
    with pytest.raises(ValueError, match="tool namespace must be"):
        FunctionTool("x", namespace="multi agent")
