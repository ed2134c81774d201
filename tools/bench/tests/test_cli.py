"""The command line: target lists, usage errors, report on folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_harmony.bench import write_records
from mlx_harmony.bench.cli import _targets, _update_manifest, build_parser, main
from mlx_harmony.bench.testing import make_record


def test_targets_are_split_deduplicated_and_checked() -> None:
    assert _targets(["local,server", "server", "mlx-lm"]) == ["local", "server", "mlx-lm"]
    assert _targets([]) == ["local", "server", "mlx-lm", "mlx-lm-server"], "default: all four"
    with pytest.raises(SystemExit, match="unknown target 'vllm'; choose from local, server"):
        _targets(["vllm"])


def test_run_options_parse() -> None:
    args = build_parser().parse_args(
        ["run", "--target", "server", "--limit", "3", "--concurrency", "4", "--max-tokens", "64"]
    )
    assert (args.limit, args.concurrency, args.max_tokens, args.retries) == (3, 4, 64, "cli")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--concurrency", "0"])


def test_the_manifest_keeps_the_first_order(tmp_path: Path) -> None:
    assert _update_manifest(tmp_path, ["server", "local"]) == ["server", "local"]
    assert _update_manifest(tmp_path, ["mlx-lm", "local"]) == ["server", "local", "mlx-lm"]
    assert json.loads((tmp_path / "runs.json").read_text())["runs"][-1] == "mlx-lm"


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_report_command_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_records(tmp_path / "records.jsonl", [make_record(), make_record(prompt_id="p-2")])
    assert main(["report", str(tmp_path), "--title", "T"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text().startswith("# T")


def test_report_on_a_folder_without_runs_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nothing")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_a_bad_prompt_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text("{nope\n")
    assert main(["run", "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "p.jsonl:1: not a valid prompt" in capsys.readouterr().err
