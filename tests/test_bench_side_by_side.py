"""tools/bench_batch_engine.py and tools/bench_constrain.py run end to end and report every
variant they compare side by side (the numbers themselves are the benchmark's, not a test's)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _run(script: str, *flags: str) -> str:
    done = subprocess.run(
        [sys.executable, f"tools/{script}", *flags],
        cwd=ROOT,
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    return done.stdout


@pytest.mark.slow
def test_the_batch_engine_bench_compares_both_prefills_with_mlx_lm(tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    flags = ["--shape", "tiny", "--concurrency", "1,3", "--tokens", "4", "--rounds", "1"]
    printed = _run("bench_batch_engine.py", *flags, "--out", str(out))
    rates = json.loads(out.read_text())["rates_tok_s"]
    assert set(rates) == {"1", "3"}
    for level in rates.values():
        assert set(level) == {"ours", "ours_one_at_a_time", "mlx_lm"}
        assert all(rate > 0 for runs in level.values() for rate in runs)
    assert "| one at a time / mlx-lm |" in printed


@pytest.mark.slow
def test_the_constrain_bench_times_free_constrained_and_the_old_mask(tmp_path: Path) -> None:
    out = tmp_path / "constrain.json"
    flags = ["--shape", "tiny", "--no-ttft", "--rounds", "1", "--max-tokens", "6"]
    printed = _run("bench_constrain.py", *flags, "--streams", "2", "--json", str(out))
    result = json.loads(out.read_text())
    assert "ttft_s" not in result  # --no-ttft
    for part in (result["batch_1"], result["streams"]):
        for variant in ("free", "constrained", "waiting"):
            assert part[f"{variant}_tok_s"] > 0
        assert part["constrained_over_free"] > 0
        assert part["waiting_over_free"] > 0
    assert "before (mask after the step)" in printed
