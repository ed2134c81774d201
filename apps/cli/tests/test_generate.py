"""mlx-harmony-generate: one prompt in, the answer out (or JSON)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from mlx_harmony.cli.generate import main, run_generate
from mlx_harmony.controller import FinishReason, LocalBackend
from mlx_harmony.controller.testing import FakeBackend, FakeReply, Script, ScriptedGenerator


class Stdin(io.StringIO):
    def __init__(self, text: str = "", *, tty: bool = False) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def generate(
    argv: list[str], backend: Any, stdin: str = "", tty: bool = False
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    factory = backend if callable(backend) else (lambda launch, location, on_close: backend)
    status = run_generate(
        argv, stdin=Stdin(stdin, tty=tty), stdout=out, stderr=err, backend_factory=factory
    )
    return status, out.getvalue(), err.getvalue()


def test_the_prompt_flag_prints_the_answer() -> None:
    backend = FakeBackend([FakeReply(answer="Paris.", thinking="Easy one.")])
    status, out, err = generate(["--prompt", "Capital of France?", "--temperature", "0"], backend)
    assert status == 0
    assert out == "Paris.\n"
    assert "Easy one." not in out + err
    request = backend.requests[0]
    assert request.turn.user.text == "Capital of France?"
    assert request.config.setting("temperature") == 0.0


def test_the_prompt_can_come_from_stdin() -> None:
    backend = FakeBackend(["Four."])
    status, out, _ = generate([], backend, stdin="What is 2 + 2?\n")
    assert status == 0
    assert out == "Four.\n"
    assert backend.requests[0].turn.user.text == "What is 2 + 2?\n"


def test_no_prompt_is_an_error() -> None:
    from mlx_harmony.cli.launch import CliError

    with pytest.raises(CliError, match="--prompt TEXT"):
        generate([], FakeBackend(), tty=True)
    with pytest.raises(CliError, match="empty"):
        generate(["--prompt", "  "], FakeBackend())


def test_show_thinking_streams_the_reasoning_to_stderr() -> None:
    backend = FakeBackend([FakeReply(answer="Yes.", thinking="Let me think.")])
    _, out, err = generate(["--prompt", "Q", "--show-thinking"], backend)
    assert out == "Yes.\n"
    assert err.splitlines() == [
        "note: no --model or --profile: answering with the tiny demo model",
        "Let me think.",
    ]


def test_json_has_the_analysis_the_answer_and_the_stats() -> None:
    generator = ScriptedGenerator([Script.harmony("Blue.", analysis="Rayleigh scattering.")])
    status, out, _ = generate(
        ["--prompt", "Sky colour?", "--json", "--max-tokens", "50"], LocalBackend(generator)
    )
    assert status == 0
    data = json.loads(out)
    assert data["final"] == "Blue."
    assert data["analysis"] == "Rayleigh scattering."
    assert data["finish_reason"] == "stop"
    assert data["truncated"] is False
    assert data["stats"]["prompt_tokens"] > 0
    assert data["stats"]["completion_tokens"] > 0
    assert data["model"]  # the demo model's folder here
    assert generator.calls[0].max_tokens == 50


def test_a_cut_answer_ends_with_the_marker() -> None:
    reply = FakeReply(answer="Once upon a", finish_reason=FinishReason.LENGTH, truncated=True)
    _, out, _ = generate(["--prompt", "Story"], FakeBackend([reply]))
    assert out == "Once upon a [truncated]\n"


def test_main_returns_usage_and_error_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--top-k", "-1"]) == 2
    assert main(["--prompt", "x", "--model", "./no/such/model"]) == 1
    assert "does not exist" in capsys.readouterr().err
