"""The ``batching`` and ``server-overhead`` sweeps: requests, rotation, medians, the table, the
files they write, and the command line, on scripted targets (no model, no server)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mlx_harmony.bench import BenchSettings, Prompt
from mlx_harmony.bench import targets as targets_module
from mlx_harmony.bench.cli import build_parser, main
from mlx_harmony.bench.records import portable_path, scrub_paths
from mlx_harmony.bench.sweep import (
    NEVER_END,
    SweepPlan,
    SweepRow,
    median_rows,
    render_sweep,
    run_sweep,
    sweep_prompt_config,
    sweep_requests,
    sweep_table,
)
from mlx_harmony.bench.testing import ScriptedTarget

POOL = [
    Prompt(id="a", category="question", turns=("What is 2 + 2?",)),
    Prompt(id="b", category="coding", turns=("Write hello world.",)),
]


def test_requests_are_unique_and_cycle_through_the_pool() -> None:
    requests = sweep_requests(POOL, 3, 7)
    assert [r.id for r in requests] == ["b#7", "a#8", "b#9"]
    assert requests[0].turns == ("(Request 7.) Write hello world.",)
    with pytest.raises(ValueError, match="at least one single-turn prompt"):
        sweep_requests([], 1, 0)


def test_a_plan_refuses_bad_numbers() -> None:
    with pytest.raises(ValueError, match="client counts must be >= 1"):
        SweepPlan(name="batching", levels=(0, 2))
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        SweepPlan(name="batching", levels=(1,), rounds=0)


def test_every_round_level_and_target_is_measured_with_rotating_order(tmp_path: Path) -> None:
    local = ScriptedTarget(name="local", completion_tokens=5)
    server = ScriptedTarget(name="server", concurrent=True, completion_tokens=5, delay=0.02)
    plan = SweepPlan(name="server-overhead", levels=(2, 1), requests_per_client=2, rounds=2)
    seen: list[SweepRow] = []
    rows = run_sweep(
        {"local": local, "server": server},
        POOL,
        BenchSettings(max_tokens=16),
        plan,
        records_dir=tmp_path,
        on_row=seen.append,
    )
    assert rows == seen
    order = [(r.round, r.clients, r.target) for r in rows]
    assert order == [
        (0, 1, "local"), (0, 1, "server"),
        (0, 2, "server"), (0, 2, "local"),
        (1, 1, "server"), (1, 1, "local"),
        (1, 2, "local"), (1, 2, "server"),
    ]  # fmt: skip
    assert [r.requests for r in rows] == [2, 2, 4, 4, 2, 2, 4, 4]
    assert all(r.completion_tokens == r.requests * 5 and r.errors == 0 for r in rows)
    # warm-up: one request each, plus a burst at the top level for the server
    assert sum(1 for c in local.calls if c[0].endswith("#1000000")) == 1
    assert sum(1 for c in server.calls if "#100000" in c[0]) == 3
    # the in-process target answers one at a time; the server sees two clients at level 2
    assert {c[2] for c in local.calls} == {0}
    assert {c[2] for c in server.calls} == {0, 1}
    assert all(c[1] == 16 for c in local.calls + server.calls), "every request gets max_tokens"
    ids = [c[0] for c in server.calls if "#100000" not in c[0]]
    assert len(ids) == len(set(ids)) == 12
    assert (tmp_path / "records-server-c2-r1.jsonl").read_text().count("\n") == 4


def _row(target: str, clients: int, rate: float | None, round_: int = 0) -> SweepRow:
    return SweepRow(target, clients, round_, 2, 0, 100, 1.0, rate, 0.5, 40.0)


def test_the_table_takes_medians_and_both_kinds_of_ratio() -> None:
    rows = [
        _row("local", 1, 50.0), _row("local", 1, 70.0, 1), _row("local", 1, 60.0, 2),
        _row("server", 1, 54.0), _row("server", 1, 57.0, 1), _row("server", 1, 120.0, 2),
        _row("local", 4, 60.0), _row("server", 4, 150.0),
    ]  # fmt: skip
    merged = median_rows(rows)
    assert merged[("local", 1)]["aggregate_tokens_per_s"] == 60.0
    assert merged[("server", 1)]["aggregate_tokens_per_s"] == 57.0
    assert merged[("server", 1)]["requests"] == 6
    cols, table = sweep_table(merged, [4, 1], ["local", "server"])
    assert cols[:5] == [
        "clients",
        "local tok/s",
        "local tokens",
        "local TTFT s",
        "local stream tok/s",
    ]
    assert cols[-3:] == ["server / local", "local C/1", "server C/1"]
    assert table[0]["server / local"] == pytest.approx(57 / 60)
    assert table[1]["server / local"] == pytest.approx(150 / 60)
    assert table[1]["server C/1"] == pytest.approx(150 / 57)
    text = render_sweep("T", "settings", cols, table)
    assert text.startswith("# T\n")
    assert "| 4 | 60.0 | 100 | 0.500 | 40.0 | 150.0 |" in text
    assert text.rstrip().endswith("| 2.50 | 1.00 | 2.63 |")


def test_a_missing_measurement_shows_as_a_dash() -> None:
    cols, table = sweep_table(median_rows([_row("server", 1, None)]), [1], ["server"])
    assert "| 1 | — | 100 |" in render_sweep("T", "s", cols, table)


def test_the_end_tokens_are_harmonys_and_the_config_keeps_the_users_choices() -> None:
    from mlx_harmony.harmony_format import get_encoding

    decoded = sorted(get_encoding().decode([int(k)]) for k in NEVER_END)
    assert decoded == ["<|call|>", "<|end|>", "<|return|>"]
    assert sweep_prompt_config({}, ban_end_tokens=False) == {"loop_detection": "off"}
    mine = {"loop_detection": "cheap", "logit_bias": {"13": 2.0}, "temperature": 0.5}
    config = sweep_prompt_config(mine, ban_end_tokens=True)
    assert config["loop_detection"] == "cheap"
    assert config["logit_bias"] == {"13": 2.0, **NEVER_END}
    assert mine["logit_bias"] == {"13": 2.0}, "the input is not changed"


def test_paths_of_this_machine_are_made_portable(tmp_path: Path) -> None:
    model = tmp_path / "models" / "gpt-oss-20b-random"
    model.mkdir(parents=True)
    assert portable_path(str(model)) == "gpt-oss-20b-random"
    assert portable_path(str(Path.cwd() / "docs" / "x.log")) == "docs/x.log"
    assert portable_path(sys.executable).startswith(("<venv>/", "<python>/"))
    assert portable_path("openai/gpt-oss-20b") == "openai/gpt-oss-20b", "a repo id stays"
    assert portable_path("/v1/health") == "/v1/health", "not a path of this machine"
    command = f"{sys.executable} -m mlx_lm server --model {model} --port 8080"
    scrubbed = scrub_paths({"notes": [command, str(model)], "n": 3})
    assert str(tmp_path) not in json.dumps(scrubbed)
    assert scrubbed["notes"][0].endswith("-m mlx_lm server --model gpt-oss-20b-random --port 8080")
    assert scrubbed["n"] == 3


def test_sweep_commands_have_their_own_defaults() -> None:
    parser = build_parser()
    batching = parser.parse_args(["batching"])
    assert (batching.concurrency, batching.requests_per_client, batching.rounds) == (
        "1,2,4,8,16",
        2,
        1,
    )
    assert (batching.max_tokens, batching.ban_end_tokens, batching.retries) == (128, False, "none")
    overhead = parser.parse_args(["server-overhead", "--natural-stops"])
    assert (overhead.concurrency, overhead.rounds, overhead.natural_stops) == ("1,4", 3, True)


@pytest.mark.parametrize("levels", ["0,1", "one", ","])
def test_bad_client_counts_are_refused(levels: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--concurrency"):
        main(["batching", "--concurrency", levels, "--out", str(tmp_path)])


@pytest.fixture
def scripted_targets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, BenchSettings]:
    """`open_target` answers with scripted targets; the demo model is a path that exists."""
    model = tmp_path / "demo-model"
    model.mkdir()
    monkeypatch.setenv("MLX_HARMONY_DEMO_MODEL", str(model))
    seen: dict[str, BenchSettings] = {}

    @contextmanager
    def fake_open(name: str, settings: BenchSettings, **_: Any) -> Iterator[ScriptedTarget]:
        seen[name] = settings
        command = [sys.executable, "-m", name, "--model", str(model)]
        yield ScriptedTarget(
            name=name,
            concurrent=name != "local",
            completion_tokens=8,
            notes={"command": command, "log": str(settings.out / "x.log")},
        )

    monkeypatch.setattr(targets_module, "open_target", fake_open)
    return seen


def test_server_overhead_writes_its_table_config_and_json(
    tmp_path: Path, scripted_targets: dict[str, BenchSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["server-overhead", "--target", "local,server", "--concurrency", "1,2"]
    assert main([*argv, "--rounds", "1", "--out", str(out)]) == 0
    settings = scripted_targets["server"]
    assert settings.extra_body == {"logit_bias": NEVER_END}, "end tokens banned by default"
    assert settings.max_concurrency == 2
    assert settings.max_tokens == 128
    config = json.loads((out / "prompt-config.json").read_text())
    assert config == {"loop_detection": "off", "logit_bias": NEVER_END}
    assert settings.prompt_config == str(out / "prompt-config.json")
    text = (out / "server-overhead.md").read_text()
    assert "| clients | local tok/s |" in text
    assert "end tokens banned" in text
    assert "server / local at 1 client:" in text
    assert capsys.readouterr().out.strip() == text.strip()
    data = (out / "server-overhead.json").read_text()
    assert str(tmp_path) not in data, "no machine path in the results"
    result = json.loads(data)
    assert result["model"] == "demo-model"
    assert result["targets"] == ["local", "server"]
    assert len(result["rows"]) == 4
    assert len(result["table"]) == 2
    assert "log" not in result["notes"]["server"]
    assert (out / "records-local-c2-r0.jsonl").is_file()


def test_batching_defaults_to_our_server_and_mlx_lm_one_at_a_time(
    tmp_path: Path, scripted_targets: dict[str, BenchSettings]
) -> None:
    out = tmp_path / "b"
    argv = ["batching", "--concurrency", "1,4", "--one-at-a-time", "--out", str(out)]
    assert main(argv) == 0
    assert list(scripted_targets) == ["server", "mlx-lm-server"]
    assert scripted_targets["server"].extra_body == {}, "natural stops by default"
    result = json.loads((out / "batching.json").read_text())
    assert [(r["target"], r["clients"]) for r in result["rows"]] == [
        ("server", 1), ("server", 4), ("mlx-lm-server", 1), ("mlx-lm-server", 4),
    ]  # fmt: skip
    assert result["table"][1]["mlx-lm-server / server"] is not None
