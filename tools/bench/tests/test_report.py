"""report: tables with medians, p90s and ratios computed independently, and real PNGs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mlx_harmony.bench import RunInfo, load_runs, summary_table, write_records, write_report
from mlx_harmony.bench.report import PLOTS, find_runs
from mlx_harmony.bench.testing import make_record

LOCAL_DECODE = [50.0, 52.0, 48.0, 61.0, 55.0]
SERVER_DECODE = [40.0, 45.0, 43.0, 39.0, 60.0]


def _run(folder: Path, target: str, decode: list[float], *, reuse: int | None = 40) -> Path:
    folder.mkdir(parents=True)
    records = [
        make_record(
            prompt_id=f"p{i}",
            target=target,
            decode_tokens_per_s=v,
            ttft_s=0.05 * (i + 1),
            context_tokens=100 * (i + 1),
        )
        for i, v in enumerate(decode)
    ]
    records.append(
        make_record(
            prompt_id="m",
            turn=1,
            target=target,
            prompt_tokens=200,
            reused_prompt_tokens=reuse,
            decode_tokens_per_s=None,
        )
    )
    records.append(make_record(prompt_id="bad", target=target, error="HTTP 500: boom"))
    write_records(folder / "records.jsonl", records)
    info = RunInfo(
        target=target,
        model="/models/demo",
        machine={"mlx_device": "Device(cpu, 0)", "cpu_count": 2},
        prompts=7,
        turns=len(records),
        errors=1,
        aggregate_completion_tokens_per_s=33.3,
        git_commit="0123456789abcdef+dirty",
    )
    (folder / "run.json").write_text(info.model_dump_json())
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    _run(tmp_path / "out" / "local", "local", LOCAL_DECODE)
    _run(tmp_path / "out" / "server", "server", SERVER_DECODE, reuse=None)
    (tmp_path / "out" / "runs.json").write_text(json.dumps({"runs": ["server", "local"]}))
    return tmp_path / "out"


def test_runs_are_found_in_the_manifest_order(runs: Path) -> None:
    assert [p.name for p in find_runs(runs)] == ["server", "local"]
    (runs / "runs.json").unlink()
    assert [p.name for p in find_runs(runs)] == ["local", "server"], "else the targets' order"
    assert find_runs(runs / "local") == [runs / "local"]
    with pytest.raises(FileNotFoundError, match="no run in"):
        find_runs(runs.parent)


def test_the_summary_table_has_independent_medians_p90s_and_ratios(runs: Path) -> None:
    table = summary_table(load_runs([runs / "local", runs / "server"]))
    rows = {(r["metric"], r["target"]): r for r in table}
    local, server = rows["decode_tokens_per_s", "local"], rows["decode_tokens_per_s", "server"]
    assert local["n"] == 5, "the failed turn and the null are left out"
    assert local["median"] == pytest.approx(np.median(LOCAL_DECODE))
    assert local["p90"] == pytest.approx(np.percentile(LOCAL_DECODE, 90))
    assert server["median"] == pytest.approx(43.0)
    assert server["ratio_to_first"] == pytest.approx(43.0 / 52.0)
    assert local["ratio_to_first"] == pytest.approx(1.0)
    reused = rows["reused_prompt_tokens", "server"]
    assert reused["n"] == 5
    assert reused["median"] == 0.0, "five first turns reuse 0; the null one is left out"


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_write_report_writes_markdown_summary_and_pngs(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    path = write_report([runs], out=out, title="Test report", command="mlx-harmony-bench x")
    text = path.read_text()
    assert text.startswith("# Test report")
    assert "`mlx-harmony-bench x`" in text
    # server is first (manifest): ratios are against it
    decode = text.split("### decode tok/s")[1].split("###")[0]
    assert "× server" in decode
    s_med, s_p90 = np.median(SERVER_DECODE), np.percentile(SERVER_DECODE, 90)
    l_med, l_p90 = np.median(LOCAL_DECODE), np.percentile(LOCAL_DECODE, 90)
    assert f"| server | 5 | {s_med:.1f} | {s_p90:.1f} | 1.00 |" in decode, decode
    assert f"| local | 5 | {l_med:.1f} | {l_p90:.1f} | {l_med / s_med:.2f} |" in decode, decode
    assert "| server | demo | Device(cpu, 0) | 7 | 7 | 1 | 1 | 33.3 | 0123456789+dirty |" in text
    assert "HTTP 500: boom" in text, "errors are listed"
    reuse = text.split("### Prompt-cache reuse per turn")[1].split("##")[0]
    assert "| local | 0% | 20% |" in reuse
    assert "| server | 0% | — |" in reuse
    for name in PLOTS:
        assert f"]({name})" in text
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", png[16:24])
        assert (width, height) == (600, 400), (name, width, height)
        assert len(png) < 200_000, f"{name} should stay small"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["server", "local"]
    assert summary["runs"][1]["cache_reuse_by_turn"] == {"1": 0.0, "2": 0.2}


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_the_report_goes_into_the_first_folder_by_default(runs: Path) -> None:
    path = write_report([runs / "local"])
    assert path == runs / "local" / "report.md"
    assert (runs / "local" / "decode_tps.png").is_file()


def test_repeated_targets_are_told_apart_by_folder(tmp_path: Path) -> None:
    _run(tmp_path / "a" / "local", "local", LOCAL_DECODE)
    _run(tmp_path / "b" / "local", "local", SERVER_DECODE)
    labels = [r.label for r in load_runs([tmp_path / "a", tmp_path / "b"])]
    assert labels == ["local (a)", "local (b)"]
