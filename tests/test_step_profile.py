"""tools/bench_step_profile.py runs end to end and reports what its docstring promises."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_step_profile_reports_times_and_a_kernel_census(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    flags = ["--shape", "tiny", "--steps", "4", "--prompt-tokens", "16", "--json", str(out)]
    subprocess.run(
        [sys.executable, "tools/bench_step_profile.py", *flags],
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    result = json.loads(out.read_text())
    eager, compiled = result["eager"], result["compiled"]
    for step in (eager, compiled):
        assert step["build_ms"] > 0
        assert step["eval_ms"] > 0
        assert step["tokens_per_s"] > 0
        assert 0 < step["kernels"] < step["primitives"]  # views launch nothing
    # mx.compile fuses element-wise chains: the compiled graph holds more fused kernels.
    assert compiled["fused"] > eager["fused"]
    assert result["weight_bytes_per_step"] > 0
