"""All four targets on the demo model, then the report; no server left running."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from mlx_harmony.bench import TARGETS, read_records
from mlx_harmony.bench.cli import main
from mlx_harmony.bench.report import PLOTS


def _running_children() -> set[int]:
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
def test_every_target_on_the_demo_model_then_the_report(demo_model: Path, tmp_path: Path) -> None:
    before = _running_children()
    out = tmp_path / "bench"
    status = main(
        [
            "run",
            "--target",
            ",".join(TARGETS),
            "--model",
            str(demo_model),
            "--category",
            "question",
            "--category",
            "multi-turn",
            "--limit",
            "2",
            "--max-tokens",
            "48",
            "--out",
            str(out),
            "--no-progress",
            "--startup-timeout",
            "300",
        ]
    )
    assert status == 0
    assert _running_children() <= before, "a server was left running"
    assert json.loads((out / "runs.json").read_text())["runs"] == list(TARGETS)
    for target in TARGETS:
        records = read_records(out / target)
        # question-001 (1 turn) and multi-001 (3 turns)
        assert [(r.prompt_id, r.turn) for r in records] == [
            ("question-001", 0),
            ("multi-001", 0),
            ("multi-001", 1),
            ("multi-001", 2),
        ], target
        assert all(r.error is None for r in records), [r.error for r in records]
        assert all(r.target == target for r in records)
        for r in records:
            assert r.completion_tokens is not None
            assert 0 < r.completion_tokens <= 48
            assert r.ttft_s is not None
            assert r.wall_s is not None
            assert 0 < r.ttft_s <= r.wall_s
            assert r.prompt_tokens is not None
            assert r.prompt_tokens > 0
        assert records[2].prompt_tokens > records[1].prompt_tokens, "turn 2 carries turn 1"
        run = json.loads((out / target / "run.json").read_text())
        assert run["model"] == demo_model.name  # recorded without this machine's path
        assert run["aggregate_completion_tokens_per_s"] > 0
    # our stack reuses the conversation's prefix from turn to turn; so does mlx_lm.server
    for target in ("local", "server", "mlx-lm-server"):
        later = read_records(out / target)[2]
        assert later.reused_prompt_tokens is not None
        assert later.reused_prompt_tokens > 0, target
    assert read_records(out / "mlx-lm")[2].reused_prompt_tokens == 0
    for target in ("server", "mlx-lm-server"):
        assert (out / target / f"{target}.log").stat().st_size > 0
    report = (out / "report.md").read_text()
    for target in TARGETS:
        assert f"| {target} |" in report
    for name in PLOTS:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (
        main(["report", str(out / "server"), str(out / "local"), "--out", str(tmp_path / "r")]) == 0
    )
    again = (tmp_path / "r" / "report.md").read_text()
    assert "× server" in again, "ratios against the first folder given"
