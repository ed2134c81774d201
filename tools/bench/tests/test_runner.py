"""The measuring loop and the run folder it writes, on a scripted target (no model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import mlx_harmony.bench.runner as runner
from mlx_harmony.bench import BenchSettings, Prompt, read_records, run_prompts, run_target
from mlx_harmony.bench.targets import ModelChoice
from mlx_harmony.bench.testing import ScriptedTarget

PROMPTS = [
    Prompt(id="q1", category="question", turns=("a",), max_tokens=300),
    Prompt(id="m1", category="multi-turn", turns=("a", "b", "c")),
    Prompt(id="q2", category="question", turns=("a",)),
]


def test_every_turn_is_recorded_with_its_budget() -> None:
    target = ScriptedTarget(completion_tokens=500)
    result = run_prompts(target, PROMPTS, BenchSettings())
    assert [(r.prompt_id, r.turn) for r in result.records] == [
        ("q1", 0),
        ("m1", 0),
        ("m1", 1),
        ("m1", 2),
        ("q2", 0),
    ]
    assert [c[1] for c in target.calls] == [300, 256, 256], "the prompt's own, else 256"
    assert run_prompts(target, PROMPTS, BenchSettings(max_tokens=64)).completion_tokens == 5 * 64


def test_in_process_targets_refuse_concurrent_clients() -> None:
    with pytest.raises(ValueError, match="one turn at a time; use --concurrency 1"):
        run_prompts(ScriptedTarget(concurrent=False), PROMPTS, BenchSettings(), concurrency=2)
    with pytest.raises(ValueError, match="concurrency must be >= 1, got 0"):
        run_prompts(ScriptedTarget(), PROMPTS, BenchSettings(), concurrency=0)


def test_concurrent_clients_overlap_and_the_aggregate_counts_them_all() -> None:
    prompts = [Prompt(id=f"q{i}", category="question", turns=("a",)) for i in range(8)]
    target = ScriptedTarget(name="server", concurrent=True, delay=0.1, completion_tokens=10)
    result = run_prompts(target, prompts, BenchSettings(), concurrency=4)
    assert sorted(r.prompt_id for r in result.records) == sorted(p.id for p in prompts)
    assert {r.client for r in result.records} == {0, 1, 2, 3}
    assert result.measured_s < 0.6, "8 turns of 0.1 s on 4 clients take about 0.2 s"
    assert result.aggregate_tokens_per_s == pytest.approx(80 / result.measured_s)


def test_a_failed_turn_is_recorded_and_ends_only_its_conversation() -> None:
    target = ScriptedTarget(fail={"m1": "RuntimeError: boom"})
    result = run_prompts(target, PROMPTS, BenchSettings())
    assert [(r.prompt_id, r.turn, r.error) for r in result.records] == [
        ("q1", 0, None),
        ("m1", 0, "RuntimeError: boom"),
        ("q2", 0, None),
    ]
    assert result.errors == 1


def test_run_target_writes_records_and_run_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    closed: list[str] = []

    @contextmanager
    def fake_open(name: str, settings: BenchSettings) -> Iterator[Any]:
        opened.append(name)
        try:
            yield ScriptedTarget(name=name, notes={"log": str(settings.out / "server.log")})
        finally:
            closed.append(name)

    monkeypatch.setattr(runner, "open_target", fake_open)
    monkeypatch.setattr(runner, "resolve_model", lambda s: ModelChoice("/models/m"))
    result = run_target(
        "server",
        PROMPTS,
        BenchSettings(temperature=0.0),
        out=tmp_path / "run",
        warmup=2,
        command_line=["mlx-harmony-bench", "run"],
        progress=False,
    )
    assert (opened, closed) == (["server"], ["server"])
    assert read_records(tmp_path / "run") == result.records
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["target"] == "server"
    assert info["model"] == "/models/m"
    assert info["command_line"] == ["mlx-harmony-bench", "run"]
    assert info["turns"] == 5
    assert info["errors"] == 0
    assert info["completion_tokens"] == 50
    assert info["aggregate_completion_tokens_per_s"] == pytest.approx(
        50 / result.measured_s, rel=1e-3
    )
    assert info["settings"]["prompt_ids"] == ["q1", "m1", "q2"]
    assert info["settings"]["warmup"] == 2
    assert info["server_log"] == "server.log"
    assert info["settings"]["target_notes"]["log"] == "server.log", "no machine path in run.json"
    assert str(tmp_path) not in (tmp_path / "run" / "run.json").read_text()
    assert info["versions"]["mlx"]
    assert info["versions"]["mlx-harmony-bench"] == "0.1.0"
    assert info["machine"]["cpu_count"] >= 1
    assert info["machine"]["mlx_device"].startswith("Device(")
    assert info["started_at"] <= info["ended_at"]


def test_run_target_closes_the_target_when_the_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []

    class Exploding(ScriptedTarget):
        def run_conversation(self, prompt: Prompt, **kw: Any) -> Any:
            if prompt.id == "m1":
                raise KeyboardInterrupt
            return super().run_conversation(prompt, **kw)

    @contextmanager
    def fake_open(name: str, settings: BenchSettings) -> Iterator[Any]:
        try:
            yield Exploding(name=name)
        finally:
            closed.append(name)

    monkeypatch.setattr(runner, "open_target", fake_open)
    monkeypatch.setattr(runner, "resolve_model", lambda s: ModelChoice("/m"))
    with pytest.raises(KeyboardInterrupt):
        run_target("local", PROMPTS, BenchSettings(), out=tmp_path, progress=False)
    assert closed == ["local"]
    assert [r.prompt_id for r in read_records(tmp_path)] == ["q1"], "finished turns are kept"


def test_interleaved_runs_each_prompt_on_every_target_in_rotating_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    closed: list[str] = []

    class Logged(ScriptedTarget):
        def run_conversation(self, prompt: Prompt, **kw: Any) -> Any:
            if not prompt.id.startswith("warmup"):
                calls.append((self.name, prompt.id))
            return super().run_conversation(prompt, **kw)

    @contextmanager
    def fake_open(name: str, settings: BenchSettings) -> Iterator[Any]:
        assert settings.out == tmp_path / name, "each target logs into its own folder"
        try:
            yield Logged(name=name, delay=0.01 if name == "server" else 0.0)
        finally:
            closed.append(name)

    monkeypatch.setattr(runner, "open_target", fake_open)
    monkeypatch.setattr(runner, "resolve_model", lambda s: ModelChoice("/m"))
    results = runner.run_interleaved(
        ["local", "server"], PROMPTS, BenchSettings(), out=tmp_path, progress=False
    )
    assert calls == [
        ("local", "q1"),
        ("server", "q1"),
        ("server", "m1"),
        ("local", "m1"),
        ("local", "q2"),
        ("server", "q2"),
    ]
    assert sorted(closed) == ["local", "server"]
    for name in ("local", "server"):
        assert read_records(tmp_path / name) == results[name].records
        info = json.loads((tmp_path / name / "run.json").read_text())
        assert info["settings"]["interleaved_with"] == [n for n in ("local", "server") if n != name]
    # the server's own 5 turns of 10 ms, not the whole loop's time
    assert 0.05 <= results["server"].measured_s < 0.5
    assert results["local"].measured_s < results["server"].measured_s
