"""The Harmony and native adapters: rendering, parsing, streaming, choosing one."""

from __future__ import annotations

from pathlib import Path

import openai_harmony as oh
import pytest

from mlx_harmony.controller import (
    AnswerDelta,
    CommentaryDelta,
    HarmonyAdapter,
    NativeAdapter,
    PromptConfig,
    ThinkingDelta,
    ToolRegistry,
    ToolResult,
    Turn,
    adapter_for,
)
from mlx_harmony.controller.testing import ScriptedGenerator
from mlx_harmony.harmony_format import (
    CALL,
    END,
    RETURN,
    DeveloperConfig,
    FunctionTool,
    Message,
    SystemConfig,
    ToolCall,
    get_encoding,
    render_completion,
    render_prompt,
)

CONFIG = PromptConfig(
    developer_instructions="Be brief.",
    reasoning_effort="low",
    conversation_start_date="2025-06-28",
)


def text_of(tokens: list[int]) -> str:
    return get_encoding().decode(tokens)


def test_harmony_render_matches_harmony_format_for_a_plain_chat() -> None:
    turns = [
        Turn(Message.user("Hi"), (Message.assistant("Hello."),)),
        Turn(Message.user("How are you?")),
    ]
    got = HarmonyAdapter().render(turns, config=CONFIG)
    want = render_prompt(
        [Message.user("Hi"), Message.assistant("Hello."), Message.user("How are you?")],
        system=SystemConfig(
            reasoning_effort="low", conversation_start_date="2025-06-28", knowledge_cutoff="2024-06"
        ),
        developer=DeveloperConfig("Be brief."),
    )
    assert got == want, f"\n{text_of(got)}\n!=\n{text_of(want)}"


def test_reasoning_of_finished_turns_is_left_out_but_kept_in_the_turn_in_progress() -> None:
    turns = [
        Turn(Message.user("Q1"), (Message.analysis("OLD-THOUGHT"), Message.assistant("A1"))),
        Turn(
            Message.user("Q2"),
            (
                Message.analysis("NEW-THOUGHT"),
                Message.tool_call("functions.f", "{}"),
                Message.tool_result("f", "{}"),
            ),
        ),
    ]
    text = text_of(HarmonyAdapter().render(turns, config=CONFIG))
    assert "OLD-THOUGHT" not in text
    assert "A1" in text
    assert "NEW-THOUGHT" in text
    assert text.index("NEW-THOUGHT") < text.index("to=functions.f")


def test_builtin_tool_namespaces_render_as_openai_harmony_renders_them() -> None:
    with ToolRegistry.from_flags(python=True, browser=True) as tools:
        declarations = tools.declarations()
    weather = FunctionTool("get_weather", "Weather", {"type": "object", "properties": {}})
    turns = [Turn(Message.user("Weather?"))]
    got = HarmonyAdapter().render(
        turns, config=CONFIG, tools=declarations, function_tools=[weather]
    )
    system = SystemConfig(reasoning_effort="low", conversation_start_date="2025-06-28").to_harmony()
    for namespace in declarations.system:
        system = system.with_tools(namespace)
    developer = DeveloperConfig("Be brief.", (weather,)).to_harmony()
    conversation = oh.Conversation.from_messages(
        [
            oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
            oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer),
            oh.Message.from_role_and_content(oh.Role.USER, "Weather?"),
        ]
    )
    want = get_encoding().render_conversation_for_completion(conversation, oh.Role.ASSISTANT)
    assert got == want, f"\n{text_of(got)}\n!=\n{text_of(want)}"
    text = text_of(got)
    assert "runs in a fresh Python" in text  # the registry's own python description
    assert "functions" in text.split("<|end|>")[0]  # system mentions the functions namespace


def test_force_final_starts_the_answer_and_the_parser_reads_it() -> None:
    adapter = HarmonyAdapter()
    tokens = adapter.render([Turn(Message.user("Hi"))], config=CONFIG, force_final=True)
    assert text_of(tokens).endswith("<|start|>assistant<|channel|>final<|message|>")
    answer = [*list(get_encoding().encode("Hello!")), RETURN]
    parser = adapter.make_stream_parser(force_final=True)
    deltas = [d for t in answer for d in parser.feed(t, "")] + list(parser.flush())
    assert "".join(d.text for d in deltas) == "Hello!"
    assert all(isinstance(d, AnswerDelta) for d in deltas)
    output = parser.finish()
    assert output == adapter.parse(answer, force_final=True)
    assert output.final == "Hello!"
    assert output.final_closed
    assert not output.truncated


def test_harmony_stream_parser_tags_each_channel() -> None:
    adapter = HarmonyAdapter()
    tokens = render_completion(
        [
            Message.analysis("think"),
            Message.assistant("preamble", channel="commentary"),
            Message.assistant("done"),
        ]
    )
    parser = adapter.make_stream_parser()
    deltas = [d for t in tokens for d in parser.feed(t, "")] + list(parser.flush())
    assert "".join(d.text for d in deltas if isinstance(d, ThinkingDelta)) == "think"
    assert "".join(d.text for d in deltas if isinstance(d, CommentaryDelta)) == "preamble"
    assert "".join(d.text for d in deltas if isinstance(d, AnswerDelta)) == "done"
    output = parser.finish()
    assert (output.analysis, output.commentary, output.final) == ("think", "preamble", "done")
    assert output.stop_token == RETURN
    assert not output.called_tool


def test_harmony_parse_of_a_tool_call_and_of_a_cut_answer() -> None:
    adapter = HarmonyAdapter()
    call = adapter.parse(render_completion([Message.tool_call("functions.f", '{"a": 1}')]))
    assert call.called_tool
    assert call.stop_token == CALL
    assert call.tool_calls == (
        ToolCall("functions.f", '{"a": 1}', "commentary", "<|constrain|>json"),
    )
    cut = adapter.parse(render_completion([Message.assistant("Half of it")], stop=False))
    assert cut.truncated
    assert not cut.final_closed
    assert cut.final == "Half of it"
    closed = adapter.parse(
        render_completion([Message.assistant("Yes."), Message.analysis("more")], stop=False)
    )
    assert closed.truncated
    assert closed.final_closed


def test_tool_results_answer_on_the_calls_channel() -> None:
    adapter = HarmonyAdapter()
    message = adapter.tool_result_message(
        ToolCall("python", "print(1)", "analysis"), ToolResult("python", "1")
    )
    assert message == Message.tool_result("python", "1", channel="analysis")


def test_end_is_never_a_harmony_stop_token() -> None:
    with pytest.raises(ValueError, match="must not be a stop token"):
        HarmonyAdapter(stop_tokens={RETURN, END})


def test_native_render_builds_chat_template_messages() -> None:
    seen: list[list[dict]] = []

    def template(messages):
        seen.append(messages)
        return [1, 2, 3]

    adapter = NativeAdapter(apply_chat_template=template, decode=lambda t: "", stop_tokens={9})
    config = PromptConfig(
        developer_instructions="Be nice.",
        example_dialogues=[
            [{"role": "user", "content": "ex-q"}, {"role": "assistant", "content": "ex-a"}]
        ],
        assistant_greeting="Hello!",
    )
    turns = [
        Turn(
            Message.user("Q1"),
            (
                Message.analysis("thinking"),
                Message.tool_call("python", "1"),
                Message.tool_result("python", "1"),
                Message.assistant("A1"),
            ),
        ),
        Turn(Message.user("Q2")),
    ]
    assert adapter.render(turns, config=config) == [1, 2, 3]
    assert seen[0] == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "ex-q"},
        {"role": "assistant", "content": "ex-a"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]


def test_native_parsing_reads_plain_text_up_to_the_stop_token() -> None:
    words = {1: "Hel", 2: "lo", 3: "!"}
    adapter = NativeAdapter(
        apply_chat_template=lambda m: [],
        decode=lambda tokens: "".join(words[t] for t in tokens),
        stop_tokens={9},
    )
    parser = adapter.make_stream_parser()
    deltas = [
        d for t in (1, 2, 3, 9, 1) for d in parser.feed(t, words.get(t, "") if t != 9 else "")
    ]
    assert [d.text for d in deltas] == ["Hel", "lo", "!"]
    output = parser.finish()
    assert output.final == "Hello!"
    assert output.stop_token == 9
    assert not output.truncated
    assert output == adapter.parse([1, 2, 3, 9, 1])
    cut = adapter.parse([1, 2])
    assert cut.truncated
    assert cut.final == "Hello"
    assert not cut.final_closed
    assert cut.messages == (Message.assistant("Hello"),)


def test_adapter_for_chooses_by_the_generator() -> None:
    harmony = adapter_for(ScriptedGenerator(is_harmony=True))
    native = adapter_for(ScriptedGenerator(is_harmony=False))
    assert isinstance(harmony, HarmonyAdapter)
    assert harmony.supports_tools
    assert isinstance(native, NativeAdapter)
    assert not native.supports_tools
    assert END not in harmony.stop_tokens
    assert {RETURN, CALL} <= harmony.stop_tokens
    assert native.stop_tokens == {199999}


def test_only_the_adapters_module_asks_which_kind_of_model_it_has() -> None:
    import mlx_harmony.controller as controller

    package = Path(controller.__file__).parent
    allowed = {"adapters.py", "testing.py"}  # testing.py's ScriptedGenerator plays a model
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name not in allowed
        and any(word in path.read_text() for word in ("is_harmony", "model_type", "gpt_oss"))
    ]
    assert offenders == []
