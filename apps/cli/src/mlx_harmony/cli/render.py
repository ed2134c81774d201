"""How chat events look in the terminal (rich).

A reply streams as it is generated: the reasoning first, dimmed, in a block with a ``│``
gutter under a ``▾ thinking`` heading (``▸ thinking (hidden)`` with ``--hide-thinking``), then
the answer. The answer is markdown, re-rendered while it streams (a `rich.live.Live` that shows
the tail that fits the screen) and printed in full when it ends, code blocks highlighted;
``--no-markdown`` streams it as plain text. Retries, tool calls and their results, dropped
context and cancellation are one short line each; a cut answer ends with ``[truncated]``.
The prompt config's ``truncate_thinking`` / ``truncate_response`` cut what is shown (never what
is kept) after that many characters, marked ``[truncated]``; ``log_timing_stats`` adds a
timing line after each turn (`Renderer.use_config` reads them).

`Renderer.show(event)` is the only entry point the session uses, so tests render into a
`rich.console.Console` writing to a string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.text import Text

from mlx_harmony.controller import (
    TRUNCATED_MARKER,
    AnswerDelta,
    CommandOutput,
    CommentaryDelta,
    ContextTrimmed,
    FinishReason,
    GenerationInfo,
    PromptConfig,
    Quit,
    RetryEvent,
    StatsEvent,
    ThinkingDelta,
    ToolCallEvent,
    ToolResultEvent,
    TurnDone,
    timing_line,
)

if TYPE_CHECKING:
    from rich.live import Live
    from rich.markdown import Markdown

__all__ = ["THINKING_HEADING", "RenderOptions", "Renderer", "one_line"]

THINKING_HEADING = "▾ thinking"
HIDDEN_THINKING = "▸ thinking (hidden)"
GUTTER = "│ "
_LONE_NUMBER = re.compile(r"\s*\d{1,9}[.)]\s*")

_FINISH_NOTES = {
    FinishReason.LOOP: "⚠ the reply kept repeating itself and was stopped",
    FinishReason.NO_FINAL: "⚠ the model only thought and gave no answer; \\retry to try again",
    FinishReason.TOOL_LIMIT: "⚠ the model kept calling tools past the limit for one turn",
    FinishReason.LENGTH: "⚠ the reply reached max_tokens",
    FinishReason.TOOL_CALLS: "⚠ the model called a function this chat does not provide",
}


@dataclass(frozen=True)
class RenderOptions:
    markdown: bool = True
    show_thinking: bool = True
    code_theme: str = "monokai"
    refresh_per_second: float = 12.0


def one_line(text: str, width: int = 100) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class _Tail:
    """Markdown that shows only its last lines while it streams (what fits on the screen), so
    a long answer scrolls instead of being cut; the full text is printed when it ends."""

    def __init__(self, text: str, code_theme: str) -> None:
        self.text = text
        self.code_theme = code_theme

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.markdown import Markdown

        text = self.text
        shown = (
            Text(text)
            if _LONE_NUMBER.fullmatch(text)
            else Markdown(text, code_theme=self.code_theme)
        )
        lines = console.render_lines(shown, options, pad=False)
        keep = max(1, console.size.height - 2)
        for line in lines[-keep:]:
            yield from line
            yield Segment.line()


class Renderer:
    """Renders the events of a chat on `console`; see the module docstring."""

    def __init__(self, console: Console, options: RenderOptions | None = None) -> None:
        self.console = console
        self.options = options or RenderOptions()
        self.last_stats: GenerationInfo | None = None
        self._block: str | None = None  # "thinking", "answer", "commentary"
        self._answer = ""
        self._live: Live | None = None
        self._hidden_shown = False
        self._at_line_start = True
        self.thinking_limit: int | None = None
        self.answer_limit: int | None = None
        self.show_timing = False
        self._thinking_shown = 0
        self._thinking_cut = False
        self._answer_cut = False

    def use_config(self, config: PromptConfig) -> None:
        """Take the display settings of the prompt config (its effective values)."""
        self.thinking_limit = config.truncate_thinking or None
        self.answer_limit = config.truncate_response or None
        self.show_timing = config.log_timing_stats

    def _reset_limits(self) -> None:
        self._thinking_shown = 0
        self._thinking_cut = False
        self._answer_cut = False

    # -- public -----------------------------------------------------------------------------

    def show(self, event: object) -> None:
        """Render one front-end event."""
        if isinstance(event, ThinkingDelta):
            self._thinking(event.text)
        elif isinstance(event, AnswerDelta):
            self._answer_delta(event.text)
        elif isinstance(event, CommentaryDelta):
            self._commentary(event.text)
        elif isinstance(event, StatsEvent):
            self.last_stats = event.info
        elif isinstance(event, RetryEvent):
            self.close()
            self._hidden_shown = False
            self._reset_limits()
            self.note(f"↻ attempt {event.attempt}: {event.detail}", style="yellow")
        elif isinstance(event, ToolCallEvent):
            self.close()
            call = event.call
            where = "" if event.handled else " (not a built-in tool: returned)"
            self.note(f"⚙ {call.recipient}{where}: {one_line(call.arguments, 80)}", style="cyan")
        elif isinstance(event, ToolResultEvent):
            self.close()
            result = event.result
            text = one_line(result.content, 100) or "(no output)"
            self.note(f"  ↳ {text}", style="red" if result.error else "cyan")
            self._hidden_shown = False
        elif isinstance(event, ContextTrimmed):
            self.close()
            s = "s" if event.dropped_turns != 1 else ""
            self.note(
                f"… {event.dropped_turns} older turn{s} left out to fit the context "
                f"({event.prompt_tokens} of {event.limit} tokens)"
            )
        elif isinstance(event, TurnDone):
            self._done(event)
        elif isinstance(event, CommandOutput):
            self.close()
            style = "red" if event.error else None
            self.console.print(Text(event.text, style=style or ""), highlight=False)
        elif isinstance(event, Quit):
            self.close()

    def note(self, text: str, *, style: str = "dim") -> None:
        """One short line, apart from the reply text."""
        self._end_line()
        self.console.print(Text(text, style=style), highlight=False, soft_wrap=False)

    def error(self, text: str) -> None:
        self.note(text, style="bold red")

    def close(self) -> None:
        """End the open block (the answer's live display, the thinking gutter)."""
        if self._live is not None:
            live, self._live = self._live, None
            live.update(self._full_markdown(self._answer), refresh=False)
            live.stop()
            if not self.console.is_terminal:  # Live ends its last line only on terminals
                self.console.line()
            self._at_line_start = True
        elif self._block is not None:
            self._end_line()
            if self._block == "answer":
                self._at_line_start = True
        self._block = None
        self._answer = ""

    # -- blocks -----------------------------------------------------------------------------

    def _open(self, block: str) -> bool:
        """Switch to `block`; True when it was not the open one. A blank line sets the reply
        apart from the reasoning above it."""
        if self._block == block:
            return False
        after_thinking = self._block == "thinking"
        self.close()
        if after_thinking:
            self.console.line()
        self._block = block
        return True

    def _write(self, text: str, style: str = "") -> None:
        if not text:
            return
        self.console.print(Text(text, style=style), end="", highlight=False, soft_wrap=True)
        self._at_line_start = text.endswith("\n")

    def _end_line(self) -> None:
        if not self._at_line_start:
            self.console.print()
            self._at_line_start = True

    def _thinking(self, text: str) -> None:
        if not self.options.show_thinking:
            if not self._hidden_shown:
                self._hidden_shown = True
                self.close()
                self.note(HIDDEN_THINKING)
            return
        if self._thinking_cut:
            return
        if self._open("thinking"):
            text = text.lstrip("\n")
            self.note(THINKING_HEADING)
            self._write(GUTTER, "dim")
        limit = self.thinking_limit
        if limit is not None and self._thinking_shown + len(text) > limit:
            text = text[: max(limit - self._thinking_shown, 0)]
            self._thinking_cut = True
        self._thinking_shown += len(text)
        self._write(text.replace("\n", "\n" + GUTTER), "dim italic")
        if self._thinking_cut:
            self._write(f" {TRUNCATED_MARKER}", "bold yellow")

    def _commentary(self, text: str) -> None:
        if self._open("commentary"):
            text = text.lstrip()
            self._end_line()
        self._write(text, "italic")

    def _answer_delta(self, text: str) -> None:
        if self._answer_cut:
            return
        limit = self.answer_limit
        if limit is not None and len(self._answer) + len(text) > limit:
            text = text[: max(limit - len(self._answer), 0)]
            self._answer_cut = True
        if self._open("answer"):
            text = text.lstrip()
            self._end_line()
            if self.options.markdown:
                from rich.live import Live

                self._live = Live(
                    console=self.console,
                    refresh_per_second=self.options.refresh_per_second,
                    transient=False,
                )
                self._live.start()
        self._answer += text
        if self._live is not None:
            self._live.update(_Tail(self._answer, self.options.code_theme), refresh=False)
        else:
            self._write(text)

    def _full_markdown(self, text: str) -> Text | Markdown:
        if _LONE_NUMBER.fullmatch(text):  # markdown reads "42." as an empty list item
            return Text(text.strip())
        from rich.markdown import Markdown

        return Markdown(text, code_theme=self.options.code_theme)

    def message(self, text: str) -> None:
        """A whole assistant message (the greeting), as markdown unless turned off."""
        self.close()
        if self.options.markdown:
            self.console.print(self._full_markdown(text))
        else:
            self.console.print(Text(text), highlight=False)

    def _done(self, event: TurnDone) -> None:
        result = event.result
        if self._block == "answer" and result.final.strip():
            final = result.final  # the parsed answer (a stop string already cut off)
            if self.answer_limit is not None and len(final) > self.answer_limit:
                final, self._answer_cut = final[: self.answer_limit], True
            self._answer = final
        had_answer = self._block == "answer" or bool(result.final.strip())
        self.close()
        self._hidden_shown = False
        cut = self._answer_cut
        self._reset_limits()
        if self.show_timing:
            self.note(timing_line(result.timing()))
        if cut and not result.truncated:
            self.note(TRUNCATED_MARKER, style="bold yellow")
        if result.finish_reason is FinishReason.CANCELLED:
            self.note(
                "⏹ cancelled: the partial reply is kept (\\undo drops it, \\retry redoes it)",
                style="yellow",
            )
            return
        if result.truncated:
            self.note(TRUNCATED_MARKER, style="bold yellow")
        note = _FINISH_NOTES.get(result.finish_reason)
        if note is not None and not (
            result.finish_reason is FinishReason.LENGTH and result.truncated
        ):
            self.note(note, style="yellow")
        elif not had_answer and result.finish_reason is FinishReason.STOP:
            self.note("(no answer)", style="yellow")
