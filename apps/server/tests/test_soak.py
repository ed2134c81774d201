"""A 60-second soak of a real server process on the demo model (tools/soak.py): 16 clients of
mixed traffic, then no 5xx, no leak, no stuck slot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[3] / "tools" / "soak.py"


@pytest.mark.slow
def test_a_minute_of_mixed_traffic_leaves_nothing_behind(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SOAK), "--duration", "60", "--clients", "16", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["checks"] == {
        "no_5xx": True,
        "no_client_failures": True,
        "rss_back_near_baseline": True,
        "fds_back_near_baseline": True,
        "no_stuck_slot": True,
        "no_server_tracebacks": True,
    }, (done.stdout, result["failures"])
    assert done.returncode == 0
    kinds = set(result["latency_by_kind"])
    assert {"chat", "bad_input", "tool_call", "responses_chain", "tokenize"} <= kinds
    assert result["statuses"].get("200", 0) > 50
    assert (tmp_path / "soak.png").stat().st_size > 10_000
