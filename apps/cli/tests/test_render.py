"""How events look: thinking apart and first, the answer as markdown or plain text, short
notes for retries, tools and cancellation, the truncation marker."""

from __future__ import annotations

import io

from rich.console import Console

from mlx_harmony.cli.render import HIDDEN_THINKING, THINKING_HEADING, Renderer, RenderOptions
from mlx_harmony.controller import (
    AnswerDelta,
    CommandOutput,
    CommentaryDelta,
    ContextTrimmed,
    FinishReason,
    GenerationInfo,
    RetryEvent,
    RetryReason,
    StatsEvent,
    ThinkingDelta,
    ToolCallEvent,
    ToolResult,
    ToolResultEvent,
    Turn,
    TurnDone,
    TurnResult,
)
from mlx_harmony.harmony_format import Message, ToolCall


def render(events, *, terminal: bool = False, **options) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, height=20, color_system=None, force_terminal=terminal)
    renderer = Renderer(console, RenderOptions(**options))
    for event in events:
        renderer.show(event)
    renderer.close()
    return buffer.getvalue()


def done(final: str, finish=FinishReason.STOP, truncated: bool = False) -> TurnDone:
    return TurnDone(TurnResult(Turn(Message.user("q")), final, finish, truncated=truncated))


def stream(thinking: str, answer: str) -> list:
    return [
        *(ThinkingDelta(w) for w in thinking.split(" ") if w),
        *(AnswerDelta(w) for w in answer.split(" ")),
    ]


def test_thinking_is_shown_in_its_block_before_the_answer() -> None:
    events = [ThinkingDelta("First idea.\nSecond"), ThinkingDelta(" idea."), AnswerDelta("Done.")]
    screen = render([*events, done("Done.")])
    lines = [line.rstrip() for line in screen.splitlines()]
    assert lines[0] == THINKING_HEADING
    assert lines[1] == "│ First idea."
    assert lines[2] == "│ Second idea."
    assert lines[3] == ""  # the answer is set apart
    assert lines.index("Done.") == 4


def test_the_answer_is_rendered_as_markdown_with_code_highlighted() -> None:
    answer = "# Title\n\nSome **bold** text.\n\n```python\nprint('hi')\n```\n"
    screen = render([AnswerDelta(answer), done(answer)])
    assert "**" not in screen
    assert "```" not in screen
    assert "Some bold text." in screen
    assert "print('hi')" in screen
    colored = render([AnswerDelta(answer), done(answer)], terminal=True)
    assert "\x1b[" in colored  # styled: the heading, the bold text, the highlighted code


def test_no_markdown_prints_the_text_as_it_is() -> None:
    answer = "Some **bold** text.\n\n```python\nprint('hi')\n```"
    screen = render([AnswerDelta(answer), done(answer)], markdown=False)
    assert answer in screen


def test_the_final_text_replaces_what_streamed() -> None:
    # a stop string streamed but the turn cut it off: the answer block shows the parsed final
    screen = render([AnswerDelta("Paris. STOP and more"), done("Paris.")])
    assert "Paris." in screen
    assert "STOP" not in screen


def test_hide_thinking_shows_one_placeholder_line() -> None:
    screen = render(stream("a b c d", "Answer."), show_thinking=False)
    assert screen.count(HIDDEN_THINKING) == 1
    assert THINKING_HEADING not in screen
    assert "a b" not in screen
    assert "Answer." in screen


def test_truncated_answers_end_with_the_marker() -> None:
    screen = render([AnswerDelta("Half an"), done("Half an", FinishReason.LENGTH, True)])
    assert screen.rstrip().endswith("[truncated]")
    assert "max_tokens" not in screen  # the marker says it once


def test_retries_tools_and_trimming_are_short_notes() -> None:
    call = ToolCall(recipient="python", arguments="print(2 ** 10)\nprint('x')", channel="analysis")
    events = [
        ThinkingDelta("Let me"),
        RetryEvent(2, RetryReason.LOOP, "the reply looped; retrying", 512),
        ContextTrimmed(3, 900, 1000),
        ToolCallEvent(call, handled=True),
        ToolResultEvent(call, ToolResult(name="python", content="1024\nx")),
        ToolResultEvent(call, ToolResult(name="python", content="boom", error=True)),
        CommentaryDelta("Running it."),
        AnswerDelta("It is 1024."),
        done("It is 1024."),
    ]
    lines = [line.rstrip() for line in render(events).splitlines()]
    assert "↻ attempt 2: the reply looped; retrying" in lines
    assert "… 3 older turns left out to fit the context (900 of 1000 tokens)" in lines
    assert "⚙ python: print(2 ** 10) print('x')" in lines
    assert "  ↳ 1024 x" in lines
    assert "  ↳ boom" in lines
    assert "Running it." in lines
    assert lines[-1] == "It is 1024."


def test_cancelled_and_other_endings_say_what_happened() -> None:
    screen = render([AnswerDelta("Once upon"), done("Once upon", FinishReason.CANCELLED, True)])
    assert "⏹ cancelled" in screen
    assert "\\undo" in screen
    assert "[truncated]" not in screen
    assert "gave no answer" in render([ThinkingDelta("hmm"), done("", FinishReason.NO_FINAL)])
    assert "(no answer)" in render([done("")])


def test_a_lone_number_is_not_swallowed_as_an_empty_list_item() -> None:
    assert render([AnswerDelta("1024."), done("1024.")]).strip() == "1024."


def test_command_output_and_stats() -> None:
    buffer = io.StringIO()
    renderer = Renderer(Console(file=buffer, width=60, color_system=None))
    renderer.show(CommandOutput("temperature = 0.5", command="set"))
    renderer.show(CommandOutput("Unknown command \\foo.", error=True))
    info = GenerationInfo(10, 5, decode_tokens_per_s=42.0)
    renderer.show(StatsEvent(info, 1, 0))
    assert buffer.getvalue().splitlines() == ["temperature = 0.5", "Unknown command \\foo."]
    assert renderer.last_stats is info


def test_a_long_answer_streams_its_tail_and_ends_complete_on_a_terminal() -> None:
    answer = "\n\n".join(f"Paragraph {i}." for i in range(40))
    events = [AnswerDelta(p + "\n\n") for p in answer.split("\n\n")]
    screen = render([*events, done(answer)], terminal=True)
    for i in range(40):
        assert f"Paragraph {i}." in screen
