"""Debug output: raw prompt and response, token ids, per-attempt files."""

from __future__ import annotations

import io
import json

import pytest

from mlx_harmony.controller import (
    DebugOptions,
    DebugWriter,
    LocalBackend,
    PromptConfig,
    Turn,
    adapter_for,
    run_chat_turn,
)
from mlx_harmony.controller.backend import ChatRequest
from mlx_harmony.controller.testing import Script, ScriptedGenerator
from mlx_harmony.harmony_format import Message


def run_with(options: DebugOptions, scripts, **config):
    generator = ScriptedGenerator(scripts)
    result = run_chat_turn(
        generator,
        adapter_for(generator),
        "Hi",
        config=PromptConfig(**config),
        debug=DebugWriter(options),
    )
    return generator, result


def test_raw_debug_prints_prompt_and_response_with_markers() -> None:
    stream = io.StringIO()
    generator, _ = run_with(
        DebugOptions(raw=True, stream=stream), [Script.harmony("Yo.", analysis="hm")]
    )
    out = stream.getvalue()
    assert generator.calls[0].prompt_text in out
    assert (
        "<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>final<|message|>Yo.<|return|>"
        in out
    )
    assert f"prompt ({len(generator.calls[0].prompt_tokens)} tokens)" in out
    assert "token ids" not in out


@pytest.mark.parametrize(
    ("which", "prompt_ids", "response_ids"),
    [("in", True, False), ("out", False, True), ("both", True, True)],
)
def test_debug_tokens_prints_the_chosen_ids(
    which: str, prompt_ids: bool, response_ids: bool
) -> None:
    stream = io.StringIO()
    script = Script.harmony("Yo.")
    generator, _ = run_with(DebugOptions(tokens=which, stream=stream), [script])  # type: ignore[arg-type]
    out = stream.getvalue()
    assert (f"prompt token ids: {list(generator.calls[0].prompt_tokens)}" in out) is prompt_ids
    assert (f"response token ids: {list(script.tokens)}" in out) is response_ids
    assert "<|start|>system" not in out  # ids only, no raw text


def test_debug_files_hold_every_attempt_and_its_decision(tmp_path) -> None:
    folder = tmp_path / "debug"
    scripts = [Script.harmony("cut here and there", stop=False), Script.harmony("Fine.")]
    generator, result = run_with(DebugOptions(folder=folder), scripts, max_tokens=5)
    assert sorted(p.name for p in folder.iterdir()) == ["001-attempt-1", "001-attempt-2"]
    first, second = folder / "001-attempt-1", folder / "001-attempt-2"
    names = {
        "prompt.txt",
        "prompt_tokens.json",
        "completion.txt",
        "completion_tokens.json",
        "parse.json",
        "decision.json",
    }
    assert {p.name for p in first.iterdir()} == names
    assert json.loads((first / "prompt_tokens.json").read_text()) == list(
        generator.calls[0].prompt_tokens
    )
    assert (first / "prompt.txt").read_text() == generator.calls[0].prompt_text
    assert json.loads((first / "completion_tokens.json").read_text()) == list(scripts[0].tokens[:5])
    assert (first / "completion.txt").read_text() == "<|channel|>final<|message|>cut here"
    parse = json.loads((first / "parse.json").read_text())
    assert parse["final"] == "cut here"
    assert parse["truncated"]
    assert parse["stop_reason"] == "length"
    decision = json.loads((first / "decision.json").read_text())
    assert decision["action"] == "retry"
    assert decision["retry"]["reason"] == "length"
    assert decision["retry"]["max_tokens"] == 10
    final = json.loads((second / "decision.json").read_text())
    assert final["action"] == "accept"
    assert final["finish_reason"] == "stop"
    assert final["max_tokens"] == 10
    assert result.final == "Fine."


def test_debug_numbering_continues_across_turns_and_sessions(tmp_path) -> None:
    folder = tmp_path / "dbg"
    generator = ScriptedGenerator([Script.harmony("a"), Script.harmony("b"), Script.harmony("c")])
    backend = LocalBackend(generator, debug=DebugOptions(folder=folder))
    for text in ("one", "two"):
        list(backend.stream_turn(ChatRequest(Turn(Message.user(text)))))
    again = LocalBackend(generator, debug=DebugOptions(folder=folder))
    list(again.stream_turn(ChatRequest(Turn(Message.user("three")))))
    assert sorted(p.name for p in folder.iterdir()) == [
        "001-attempt-1",
        "002-attempt-1",
        "003-attempt-1",
    ]
    assert "three" in (folder / "003-attempt-1" / "prompt.txt").read_text()


def test_disabled_debug_writes_nothing(tmp_path) -> None:
    backend = LocalBackend(ScriptedGenerator([Script.harmony("a")]), debug=DebugOptions())
    assert backend.debug is None
    with pytest.raises(ValueError, match="'in', 'out' or 'both'"):
        DebugOptions(tokens="all")  # type: ignore[arg-type]
