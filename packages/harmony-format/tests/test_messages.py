import datetime as dt

import openai_harmony as oh
import pytest

from mlx_harmony.harmony_format import (
    Channel,
    DeveloperConfig,
    FunctionTool,
    Message,
    ReasoningEffort,
    Role,
    SystemConfig,
)

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
    "required": ["city"],
}


def test_constructors_fill_the_harmony_header_fields() -> None:
    assert Message.user("Hi") == Message(Role.USER, "Hi")
    assert Message.assistant("Hello").channel == "final"
    assert Message.analysis("Hmm").channel == "analysis"
    call = Message.tool_call("functions.get_weather", '{"city":"Paris"}')
    assert (call.role, call.channel, call.recipient, call.content_type) == (
        Role.ASSISTANT,
        "commentary",
        "functions.get_weather",
        "<|constrain|>json",
    )
    result = Message.tool_result("functions.get_weather", '{"temp": 20}')
    assert (result.role, result.name, result.recipient, result.channel) == (
        Role.TOOL,
        "functions.get_weather",
        "assistant",
        "commentary",
    )


@pytest.mark.parametrize(
    ("name", "author"),
    [
        ("get_weather", "functions.get_weather"),
        ("functions.get_weather", "functions.get_weather"),
        ("browser.search", "browser.search"),
        ("python", "python"),
        ("browser", "browser"),
    ],
)
def test_tool_results_are_authored_by_the_full_tool_name(name: str, author: str) -> None:
    assert Message.tool_result(name, "ok").name == author


def test_dict_arguments_and_results_become_json() -> None:
    call = Message.tool_call("functions.f", {"city": "Zürich"}, constrain=None)
    assert call.text == '{"city": "Zürich"}'
    assert call.content_type is None
    assert Message.tool_result("f", {"ok": True}).text == '{"ok": true}'


def test_messages_are_frozen_and_hashable_with_enum_or_plain_channels() -> None:
    a = Message.assistant("x", channel=Channel.ANALYSIS)
    b = Message(Role.ASSISTANT, "x", channel="analysis")
    assert a == b
    assert hash(a) == hash(b)
    assert type(a.channel) is str
    assert len({a, b, Message.analysis("y")}) == 2
    with pytest.raises(AttributeError):
        a.content = "changed"  # type: ignore[misc]


def test_role_may_be_given_as_a_string() -> None:
    assert Message("user", "Hi").role is Role.USER  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Message("robot", "x"), "role must be one of"),  # type: ignore[arg-type]
        (lambda: Message(Role.USER, SystemConfig()), "only be the content of a system"),
        (lambda: Message(Role.USER, DeveloperConfig()), "only be the content of a developer"),
        (lambda: Message(Role.TOOL, "x"), "needs the tool's name"),
        (lambda: Message.tool_call("functions.get weather", "{}"), "without spaces"),
        (lambda: Message.tool_result("", "x"), "needs the tool's name"),
        (lambda: FunctionTool("get weather"), "1-64 letters"),
        (lambda: FunctionTool("f", parameters={"x": {1, 2}}), "JSON-serializable"),
        (lambda: FunctionTool.from_openai({"type": "file_search"}), "type 'function'"),
        (lambda: FunctionTool.from_openai({"type": "function"}), "needs a 'name'"),
        (lambda: DeveloperConfig(tools=(FunctionTool("f"), FunctionTool("f"))), "unique"),
        (lambda: DeveloperConfig(tools=({"name": "f"},)), "FunctionTool.from_openai"),  # type: ignore[arg-type]
        (lambda: SystemConfig(channels="final"), r"channels=\('final',\)"),  # type: ignore[arg-type]
        (lambda: SystemConfig(reasoning_effort="extreme"), "extreme"),  # type: ignore[arg-type]
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(build, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        build()


@pytest.mark.parametrize(
    "tool",
    [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather.", "parameters": WEATHER},
        },
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather.",
            "parameters": WEATHER,
        },
    ],
    ids=["chat-completions", "responses"],
)
def test_function_tools_come_from_the_openai_shapes(tool: dict) -> None:
    parsed = FunctionTool.from_openai(tool)
    assert parsed == FunctionTool("get_weather", "Weather.", WEATHER)
    assert parsed.parameters == WEATHER
    assert FunctionTool.from_openai(parsed.to_openai()) == parsed


def test_function_tool_parameters_cannot_be_changed_from_outside() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    tool = FunctionTool("f", "d", schema)
    before = hash(tool)
    schema["properties"]["b"] = {"type": "number"}
    returned = tool.parameters
    assert returned is not None
    returned["properties"]["c"] = {"type": "number"}
    assert tool.parameters == {"type": "object", "properties": {"a": {"type": "string"}}}
    assert hash(tool) == before


def test_property_order_is_part_of_a_tool_because_harmony_renders_it() -> None:
    ab = FunctionTool("f", parameters={"properties": {"a": {}, "b": {}}})
    ba = FunctionTool("f", parameters={"properties": {"b": {}, "a": {}}})
    assert ab != ba


@pytest.mark.parametrize("given", ["low", "LOW", "Low", " low ", ReasoningEffort.LOW])
def test_reasoning_effort_accepts_any_case(given: str) -> None:
    assert SystemConfig(reasoning_effort=given).reasoning_effort is ReasoningEffort.LOW  # type: ignore[arg-type]
    assert ReasoningEffort(given).to_harmony() is oh.ReasoningEffort.LOW


def test_conversation_start_date_accepts_a_date() -> None:
    config = SystemConfig(conversation_start_date=dt.date(2025, 6, 28))  # type: ignore[arg-type]
    assert config.conversation_start_date == "2025-06-28"


@pytest.mark.parametrize(
    "message",
    [
        Message.user("Hi"),
        Message.analysis("Thinking"),
        Message.tool_call("functions.f", '{"a": 1}', channel="analysis"),
        Message.tool_result("browser.search", "results"),
        Message.system(
            SystemConfig(
                model_identity="Bot",
                reasoning_effort=ReasoningEffort.HIGH,
                conversation_start_date="2025-01-01",
                knowledge_cutoff=None,
                channels=("analysis", "final"),
                browser_tool=True,
                python_tool=True,
            )
        ),
        Message.system(SystemConfig(reasoning_effort=None, channels=())),
        Message.system("A plain system message"),
        Message.developer(
            DeveloperConfig("Be brief.", (FunctionTool("f", "F.", WEATHER), FunctionTool("g")))
        ),
        Message.developer(DeveloperConfig()),
    ],
    ids=repr,
)
def test_harmony_conversion_round_trips(message: Message) -> None:
    assert Message.from_harmony(message.to_harmony()) == message


def test_an_empty_recipient_from_openai_harmony_is_no_recipient() -> None:
    """openai-harmony reads a bare ``to=`` as ``""``; that names no tool."""
    message = (
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, "x")
        .with_channel("")
        .with_recipient("")
        .with_content_type("")
    )
    assert Message.from_harmony(message) == Message(Role.ASSISTANT, "x")
