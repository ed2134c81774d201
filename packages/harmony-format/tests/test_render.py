"""Rendering, checked token for token against openai-harmony and against golden files."""

import os
from collections.abc import Callable
from pathlib import Path

import openai_harmony as oh
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_harmony.harmony_format import (
    ASSISTANT,
    CALL,
    END,
    RETURN,
    START,
    DeveloperConfig,
    FunctionTool,
    Message,
    PromptRenderer,
    ReasoningEffort,
    Role,
    SystemConfig,
    get_encoding,
    render_completion,
    render_prompt,
    render_prompt_text,
)

DATA = Path(__file__).parent / "test-data"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "days": {"type": "integer", "description": "How many days ahead"},
    },
    "required": ["location"],
}
WEATHER = FunctionTool("get_weather", "Gets the weather for a location.", WEATHER_SCHEMA)
TIME = FunctionTool("get_time", "Gets the current time.\nUTC only.")


def _h(role: oh.Role, text: str, *, channel: str | None = None) -> oh.Message:
    message = oh.Message.from_role_and_content(role, text)
    return message.with_channel(channel) if channel else message


def _h_default_system() -> oh.Message:
    return oh.Message.from_role_and_content(oh.Role.SYSTEM, oh.SystemContent.new())


def _h_developer() -> oh.Message:
    return oh.Message.from_role_and_content(
        oh.Role.DEVELOPER,
        oh.DeveloperContent.new()
        .with_instructions("Answer in French.")
        .with_function_tools(
            [
                oh.ToolDescription.new(WEATHER.name, WEATHER.description, WEATHER_SCHEMA),
                oh.ToolDescription.new(TIME.name, TIME.description),
            ]
        ),
    )


def _h_call(recipient: str, args: str, channel: str, content_type: str | None) -> oh.Message:
    message = _h(oh.Role.ASSISTANT, args, channel=channel).with_recipient(recipient)
    return message.with_content_type(content_type) if content_type else message


def _h_result(name: str, text: str) -> oh.Message:
    return (
        oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, name), text)
        .with_channel("commentary")
        .with_recipient("assistant")
    )


Case = tuple[dict, list[oh.Message]]  # render_prompt kwargs, the same conversation by hand


def _system_all_fields() -> Case:
    ours = {
        "messages": [Message.user("What can you do?")],
        "system": SystemConfig(
            model_identity="You are a helpful assistant.",
            reasoning_effort=ReasoningEffort.HIGH,
            conversation_start_date="2025-06-28",
            knowledge_cutoff="2024-06",
            browser_tool=True,
            python_tool=True,
        ),
    }
    content = (
        oh.SystemContent.new()
        .with_model_identity("You are a helpful assistant.")
        .with_reasoning_effort(oh.ReasoningEffort.HIGH)
        .with_conversation_start_date("2025-06-28")
        .with_knowledge_cutoff("2024-06")
        .with_browser_tool()
        .with_python_tool()
    )
    return ours, [
        oh.Message.from_role_and_content(oh.Role.SYSTEM, content),
        _h(oh.Role.USER, "What can you do?"),
    ]


def _system_minimal() -> Case:
    ours = {
        "messages": [Message.user("Hi")],
        "system": SystemConfig(
            model_identity=None,
            reasoning_effort=ReasoningEffort.LOW,
            knowledge_cutoff=None,
            channels=(),
        ),
    }
    content = oh.SystemContent(
        model_identity=None,
        reasoning_effort=oh.ReasoningEffort.LOW,
        knowledge_cutoff=None,
        channel_config=None,
    )
    return ours, [oh.Message.from_role_and_content(oh.Role.SYSTEM, content), _h(oh.Role.USER, "Hi")]


def _developer_function_tools() -> Case:
    ours = {
        "messages": [Message.user("Weather in Paris?")],
        "developer": DeveloperConfig("Answer in French.", (WEATHER, TIME)),
    }
    return ours, [_h_default_system(), _h_developer(), _h(oh.Role.USER, "Weather in Paris?")]


def _tool_call_round_trip() -> Case:
    args = '{"location": "Paris, France"}'
    ours = {
        "messages": [
            Message.user("Weather in Paris?"),
            Message.analysis("Need to call get_weather."),
            Message.tool_call("functions.get_weather", args),
            Message.tool_result("get_weather", '{"temperature": 21}'),
            Message.analysis("It is 21 degrees."),
            Message.assistant("Il fait 21 degrés à Paris."),
            Message.user("Merci !"),
        ],
        "system": SystemConfig(conversation_start_date="2025-06-28"),
        "developer": DeveloperConfig("Answer in French.", (WEATHER, TIME)),
    }
    return ours, [
        oh.Message.from_role_and_content(
            oh.Role.SYSTEM, oh.SystemContent.new().with_conversation_start_date("2025-06-28")
        ),
        _h_developer(),
        _h(oh.Role.USER, "Weather in Paris?"),
        _h(oh.Role.ASSISTANT, "Need to call get_weather.", channel="analysis"),
        _h_call("functions.get_weather", args, "commentary", "<|constrain|>json"),
        _h_result("functions.get_weather", '{"temperature": 21}'),
        _h(oh.Role.ASSISTANT, "It is 21 degrees.", channel="analysis"),
        _h(oh.Role.ASSISTANT, "Il fait 21 degrés à Paris.", channel="final"),
        _h(oh.Role.USER, "Merci !"),
    ]


def _multi_turn_drop_analysis() -> Case:
    turns = [("1+1?", "Add.", "2"), ("2+2?", "Add again.", "4"), ("3+3?", "And again.", "6")]
    ours: list[Message] = []
    ref: list[oh.Message] = [_h_default_system()]
    for question, thought, answer in turns:
        ours += [Message.user(question), Message.analysis(thought), Message.assistant(answer)]
        ref += [
            _h(oh.Role.USER, question),
            _h(oh.Role.ASSISTANT, thought, channel="analysis"),
            _h(oh.Role.ASSISTANT, answer, channel="final"),
        ]
    ours.append(Message.user("4+4?"))
    ref.append(_h(oh.Role.USER, "4+4?"))
    return {"messages": ours}, ref


def _ongoing_analysis() -> Case:
    ours = [
        Message.user("1+1?"),
        Message.analysis("Add."),
        Message.assistant("2"),
        Message.user("2+2?"),
        Message.analysis("Add again."),
    ]
    ref = [
        _h_default_system(),
        _h(oh.Role.USER, "1+1?"),
        _h(oh.Role.ASSISTANT, "Add.", channel="analysis"),
        _h(oh.Role.ASSISTANT, "2", channel="final"),
        _h(oh.Role.USER, "2+2?"),
        _h(oh.Role.ASSISTANT, "Add again.", channel="analysis"),
    ]
    return {"messages": ours}, ref


def _builtin_tools() -> Case:
    ours = {
        "messages": [
            Message.user("Search for MLX, then compute 2**10."),
            Message.tool_call(
                "browser.search", '{"query": "MLX"}', channel="analysis", constrain=None
            ),
            Message.tool_result("browser.search", "【0†MLX†github.com】"),
            Message(
                Role.ASSISTANT,
                "print(2**10)",
                channel="analysis",
                recipient="python",
                content_type="code",
            ),
            Message.tool_result("python", "1024"),
            Message.assistant("Found it.", channel="commentary"),
        ],
        "system": SystemConfig(browser_tool=True, python_tool=True),
    }
    system = oh.SystemContent.new().with_browser_tool().with_python_tool()
    ref = [
        oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
        _h(oh.Role.USER, "Search for MLX, then compute 2**10."),
        _h_call("browser.search", '{"query": "MLX"}', "analysis", None),
        _h_result("browser.search", "【0†MLX†github.com】"),
        _h_call("python", "print(2**10)", "analysis", "code"),
        _h_result("python", "1024"),
        _h(oh.Role.ASSISTANT, "Found it.", channel="commentary"),
    ]
    return ours, ref


GOLDEN: dict[str, Callable[[], Case]] = {
    "system_all_fields": _system_all_fields,
    "system_minimal": _system_minimal,
    "developer_function_tools": _developer_function_tools,
    "tool_call_round_trip": _tool_call_round_trip,
    "multi_turn_drop_analysis": _multi_turn_drop_analysis,
    "ongoing_analysis": _ongoing_analysis,
    "builtin_tools": _builtin_tools,
}


def _reference(messages: list[oh.Message]) -> list[int]:
    return get_encoding().render_conversation_for_completion(
        oh.Conversation.from_messages(messages), oh.Role.ASSISTANT
    )


def assert_same_tokens(got: list[int], expected: list[int]) -> None:
    """Compare token lists; on failure show the decoded text around the first difference."""
    if got == expected:
        return
    enc = get_encoding()
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    at = min(len(got), len(expected)) if at is None else at
    lo = max(0, at - 8)
    pytest.fail(
        f"tokens differ at {at} (lengths {len(got)} vs {len(expected)}):\n"
        f"  got:      {enc.decode(got[lo : at + 8])!r}\n"
        f"  expected: {enc.decode(expected[lo : at + 8])!r}"
    )


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_render_matches_openai_harmony_and_the_golden_file(name: str) -> None:
    kwargs, reference = GOLDEN[name]()
    expected = _reference(reference)
    assert_same_tokens(render_prompt(**kwargs), expected)
    assert_same_tokens(PromptRenderer().render_prompt(**kwargs), expected)

    golden = DATA / f"render_{name}.txt"
    text = render_prompt_text(**kwargs)
    if UPDATE:
        golden.write_text(get_encoding().decode_utf8(expected), encoding="utf-8")
    assert golden.exists(), f"{golden} is missing; run the tests once with UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8")


def test_golden_text_shows_the_analysis_drop_rule() -> None:
    text = (DATA / "render_multi_turn_drop_analysis.txt").read_text(encoding="utf-8")
    # openai-harmony drops analysis before the first final message only.
    assert "Add.<|end|>" not in text
    assert "Add again.<|end|>" in text
    assert "And again.<|end|>" in text
    ongoing = (DATA / "render_ongoing_analysis.txt").read_text(encoding="utf-8")
    assert "Add.<|end|>" in ongoing  # the last assistant message is not final: nothing dropped


def test_function_tools_add_the_functions_line_to_the_system_message() -> None:
    line = "Calls to these tools must go to the commentary channel: 'functions'."
    with_tools = render_prompt_text([Message.user("x")], developer=DeveloperConfig(tools=(TIME,)))
    without = render_prompt_text([Message.user("x")], developer=DeveloperConfig("Be brief."))
    assert line in with_tools
    assert line not in without


def test_prompt_ends_with_the_assistant_header() -> None:
    tokens = render_prompt([Message.user("Hi")])
    assert tokens[-2:] == [START, ASSISTANT]
    assert render_prompt_text([Message.user("Hi")]).endswith("<|start|>assistant")


def test_a_system_message_in_the_messages_replaces_the_default() -> None:
    custom = Message.system(SystemConfig(model_identity="Custom bot."))
    text = render_prompt_text([custom, Message.user("Hi")], developer=DeveloperConfig("Dev."))
    assert text.startswith("<|start|>system<|message|>Custom bot.")
    assert text.index("<|start|>developer") < text.index("<|start|>user")
    assert text.count("<|start|>system") == 1


def test_system_given_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="pass only one"):
        render_prompt([Message.system(), Message.user("Hi")], system=SystemConfig())
    with pytest.raises(ValueError, match="pass only one"):
        render_prompt([Message.developer("a"), Message.user("Hi")], developer=DeveloperConfig())
    with pytest.raises(TypeError, match=r"Message\.user"):
        render_prompt([{"role": "user", "content": "Hi"}])  # type: ignore[list-item]


def test_auto_drop_analysis_can_be_turned_off() -> None:
    messages = [Message.user("q"), Message.analysis("secret"), Message.assistant("a")]
    assert "secret" not in render_prompt_text(messages)
    assert "secret" in render_prompt_text(messages, auto_drop_analysis=False)
    assert_same_tokens(
        PromptRenderer().render_prompt(messages, auto_drop_analysis=False),
        render_prompt(messages, auto_drop_analysis=False),
    )


# -- hypothesis: random conversations -------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
safe_texts = texts.filter(lambda t: "<|" not in t)
recipients = st.sampled_from(
    ["functions.get_weather", "functions.get_time", "browser.search", "python"]
)
messages = st.one_of(
    st.builds(Message.user, texts),
    st.builds(Message.analysis, texts),
    st.builds(Message.assistant, texts),
    st.builds(Message.assistant, texts, channel=st.just("commentary")),
    st.builds(
        Message.tool_call,
        recipients,
        texts,
        channel=st.sampled_from(["commentary", "analysis"]),
        constrain=st.sampled_from(["json", None]),
    ),
    st.builds(Message.tool_result, recipients, texts),
)
systems = st.one_of(
    st.none(),
    st.builds(
        SystemConfig,
        reasoning_effort=st.sampled_from(list(ReasoningEffort)),
        conversation_start_date=st.sampled_from([None, "2025-01-01"]),
        browser_tool=st.booleans(),
    ),
)
developers = st.sampled_from(
    [
        None,
        DeveloperConfig("Be brief."),
        DeveloperConfig(tools=(WEATHER,)),
        DeveloperConfig("x", (WEATHER, TIME)),
    ]
)

SHARED = PromptRenderer(max_messages=64)  # shared across examples: old entries get evicted


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, max_size=12), systems, developers, st.booleans())
def test_incremental_render_equals_openai_harmony(
    conversation: list[Message],
    system: SystemConfig | None,
    developer: DeveloperConfig | None,
    drop: bool,
) -> None:
    kwargs = {"system": system, "developer": developer, "auto_drop_analysis": drop}
    assert_same_tokens(
        SHARED.render_prompt(conversation, **kwargs), render_prompt(conversation, **kwargs)
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(messages, min_size=1, max_size=16), developers)
def test_turn_by_turn_rendering_reuses_the_cache(
    conversation: list[Message], developer: DeveloperConfig | None
) -> None:
    renderer = PromptRenderer()
    for n in range(1, len(conversation) + 1):
        before = renderer.stats
        got = renderer.render_prompt(conversation[:n], developer=developer)
        assert_same_tokens(got, render_prompt(conversation[:n], developer=developer))
        after = renderer.stats
        # At most the new message is rendered; earlier ones (and system, developer) are reused.
        assert after.rendered - before.rendered <= 1 + (n == 1) * (1 + (developer is not None))
    total = len(set(conversation)) + 1 + (developer is not None)
    assert renderer.stats.rendered == total


def test_counters_prove_a_chat_renders_each_message_once() -> None:
    renderer = PromptRenderer()
    history: list[Message] = []
    for turn in range(5):
        history += [Message.user(f"question {turn}")]
        renderer.render_prompt(history)
        history += [Message.analysis(f"thought {turn}"), Message.assistant(f"answer {turn}")]
    # Turn t shows: system, t+1 questions, t answers, and the thoughts of turns 1..t-1 (the
    # first thought comes before the first final answer, which openai-harmony drops).
    shown = [1 + (t + 1) + t + max(t - 1, 0) for t in range(5)]
    # rendered at turn t: the system message (turn 0), question t, answer and thought t-1
    new = [(t == 0) + 1 + (t > 0) + (t > 1) for t in range(5)]
    stats = renderer.stats
    assert stats.rendered == sum(new) == 13
    assert stats.cached == sum(shown) - sum(new) == 23
    renderer.clear()
    assert (renderer.stats.rendered, renderer.stats.cached) == (0, 0)


def test_the_cache_is_bounded() -> None:
    renderer = PromptRenderer(max_messages=3)
    conversation = [Message.user(str(i)) for i in range(10)]
    renderer.render_prompt(conversation)
    renderer.render_prompt(conversation)
    assert renderer.stats.cached == 0  # each lookup evicted the entry needed next
    assert_same_tokens(renderer.render_prompt(conversation), render_prompt(conversation))
    with pytest.raises(ValueError, match="max_messages"):
        PromptRenderer(max_messages=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(messages.filter(lambda m: "<|" not in m.text), max_size=8), systems, developers)
def test_prompt_text_is_lossless(
    conversation: list[Message], system: SystemConfig | None, developer: DeveloperConfig | None
) -> None:
    tokens = render_prompt(conversation, system=system, developer=developer)
    text = render_prompt_text(conversation, system=system, developer=developer)
    assert_same_tokens(get_encoding().encode(text, allowed_special="all"), tokens)


def test_completion_rendering_looks_like_model_output() -> None:
    enc = get_encoding()
    tokens = render_completion([Message.analysis("Hmm."), Message.assistant("Hi!")])
    assert enc.decode_utf8(tokens) == (
        "<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant<|channel|>final<|message|>Hi!<|return|>"
    )
    call = render_completion([Message.tool_call("functions.f", "{}")])
    assert call[-1] == CALL
    assert enc.decode_utf8(call).startswith(" to=functions.f<|channel|>commentary")
    cut = render_completion([Message.assistant("Hi!")], stop=False)
    assert cut[-1] not in (END, RETURN, CALL)
    with pytest.raises(ValueError, match="put it last"):
        render_completion([Message.tool_call("functions.f", "{}"), Message.assistant("x")])
    with pytest.raises(ValueError, match="assistant messages only"):
        render_completion([Message.user("x")])
