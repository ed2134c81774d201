"""The prompt-config keys of mlx-harmony 0.4 that now do something in the controller:
perf_prompt_token_budget, log_timing_stats (debug log), xtc_special_tokens auto-detection,
and the \\branches / \\branch commands."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from mlx_harmony.controller import (
    CommandAction,
    ContextBudget,
    ContextOverflowError,
    DebugOptions,
    DebugWriter,
    PromptConfig,
    SessionState,
    adapter_for,
    apply_command,
    parse_command,
    run_chat_turn,
    timing_line,
    xtc_special_tokens,
)
from mlx_harmony.controller.testing import Script, ScriptedGenerator, scripted_turns
from mlx_harmony.harmony_format import get_encoding

NEWLINE = tuple(get_encoding().encode("\n"))


def test_the_prompt_token_budget_applies_in_performance_mode_only() -> None:
    base = PromptConfig(max_context_tokens=4096, perf_prompt_token_budget=1000)
    assert ContextBudget.from_config(base).limit == 4096 - 512
    perf = base.updated(performance_mode=True)
    assert ContextBudget.from_config(perf).limit == 1000
    assert ContextBudget.from_config(perf.updated(perf_prompt_token_budget=9000)).limit == 3584
    unlimited = PromptConfig(performance_mode=True, perf_prompt_token_budget=700)
    assert ContextBudget.from_config(unlimited).limit == 700


def test_the_prompt_token_budget_drops_the_oldest_turns() -> None:
    history = scripted_turns([(f"question {i} " * 20, f"answer {i} " * 20) for i in range(6)])
    config = PromptConfig(performance_mode=True, perf_prompt_token_budget=400)
    generator = ScriptedGenerator([Script.harmony("Ok.")])
    result = run_chat_turn(
        generator, adapter_for(generator), "Last?", history=history, config=config
    )
    assert result.dropped_turns > 0
    assert len(generator.calls[0].prompt_tokens) <= 400
    alone = PromptConfig(performance_mode=True, perf_prompt_token_budget=20)
    with pytest.raises(ContextOverflowError, match="perf_prompt_token_budget"):
        run_chat_turn(generator, adapter_for(generator), "Last?", config=alone)


def test_xtc_special_tokens_are_newline_and_eos_when_xtc_is_on() -> None:
    generator = ScriptedGenerator([Script.harmony("A."), Script.harmony("B.")])
    adapter = adapter_for(generator)
    specials = xtc_special_tokens(generator, adapter)
    assert specials == (*NEWLINE, *sorted(adapter.stop_tokens))
    on = PromptConfig.from_dict({"xtc_probability": 0.5, "xtc_threshold": 0.1})
    run_chat_turn(generator, adapter, "Hi", config=on)
    assert generator.calls[0].sampling is not None
    assert generator.calls[0].sampling.xtc_special_tokens == specials
    given = on.updated(xtc_special_tokens=[7])
    run_chat_turn(generator, adapter, "Hi", config=given)
    assert generator.calls[1].sampling is not None
    assert generator.calls[1].sampling.xtc_special_tokens == (7,)


def test_xtc_off_leaves_the_special_tokens_alone() -> None:
    generator = ScriptedGenerator([Script.harmony("A.")])
    run_chat_turn(generator, adapter_for(generator), "Hi", config=PromptConfig())
    assert generator.calls[0].sampling is not None
    assert generator.calls[0].sampling.xtc_special_tokens == ()


def test_log_timing_stats_writes_the_timing_to_the_debug_log(tmp_path: Path) -> None:
    stream = io.StringIO()
    debug = DebugWriter(DebugOptions(folder=tmp_path, stream=stream))
    generator = ScriptedGenerator([Script.harmony("A."), Script.harmony("B.")])
    config = PromptConfig(log_timing_stats=True)
    result = run_chat_turn(generator, adapter_for(generator), "Hi", config=config, debug=debug)
    saved = json.loads((tmp_path / "001-timing.json").read_text())
    assert saved == result.timing()
    assert f"[debug] turn 1 {timing_line(saved)}" in stream.getvalue()
    assert timing_line(saved).startswith("timing: prompt ")
    run_chat_turn(generator, adapter_for(generator), "Hi", config=PromptConfig(), debug=debug)
    assert not (tmp_path / "002-timing.json").exists()


def test_branch_commands_parse_and_check_their_argument() -> None:
    state = SessionState()
    listing = apply_command(state, parse_command("\\branches"))  # type: ignore[arg-type]
    assert listing.action is CommandAction.BRANCHES
    switch = apply_command(state, parse_command("/branch 2"))  # type: ignore[arg-type]
    assert (switch.action, switch.branch) == (CommandAction.BRANCH, 2)
    for bad in ("\\branch", "\\branch two", "\\branch 0"):
        result = apply_command(state, parse_command(bad))  # type: ignore[arg-type]
        assert result.error
        assert "\\branches" in result.message
    help_text = apply_command(state, parse_command("\\help")).message  # type: ignore[arg-type]
    assert "\\branches" in help_text
    assert "\\branch N" in help_text
