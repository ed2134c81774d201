"""The report's maths against values computed independently (NumPy, by hand)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_harmony.bench import percentile, ratio, summarize
from mlx_harmony.bench.stats import cache_reuse_by_turn, summarize_metric
from mlx_harmony.bench.testing import make_record


def test_percentile_of_hand_picked_values() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # sorted 1 2 3 4; rank(p90) = 3 * 0.9 = 2.7
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([7.0], 90) == 7.0
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
    st.floats(0, 100),
)
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-9, abs=1e-6)


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"q must be in \[0, 100\], got 101"):
        percentile([1.0], 101)


def test_ratio_is_none_when_a_side_is_missing_or_zero() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None


def test_summaries_leave_out_failed_turns_and_nulls() -> None:
    decode = [40.0, 55.0, 61.0, 47.0, 70.0, 52.0]
    records = [make_record(prompt_id=f"p{i}", decode_tokens_per_s=v) for i, v in enumerate(decode)]
    records.append(make_record(prompt_id="n", decode_tokens_per_s=None))
    records.append(make_record(prompt_id="e", decode_tokens_per_s=999.0, error="boom"))
    summary = summarize(records)
    assert (summary.target, summary.turns, summary.errors) == ("local", 8, 1)
    m = summary.metrics["decode_tokens_per_s"]
    assert m is not None
    assert m.n == 6
    assert m.median == pytest.approx(np.median(decode))
    assert m.p90 == pytest.approx(np.percentile(decode, 90))
    assert m.mean == pytest.approx(np.mean(decode))
    # e2e rate is derived per record: completion / wall
    e2e = summary.metrics["e2e_tokens_per_s"]
    assert e2e is not None
    assert e2e.median == pytest.approx(40.0)
    assert summarize_metric([None, None]) is None


def test_summarize_needs_a_target_for_mixed_records() -> None:
    mixed = [make_record(target="local"), make_record(target="server")]
    with pytest.raises(ValueError, match="several targets"):
        summarize(mixed)
    assert summarize(mixed, "server").turns == 1


def test_cache_reuse_per_turn_is_the_share_of_prompt_tokens() -> None:
    records = [
        make_record(turn=0, prompt_tokens=100, reused_prompt_tokens=0),
        make_record(turn=1, prompt_tokens=200, reused_prompt_tokens=150),
        make_record(turn=1, prompt_tokens=100, reused_prompt_tokens=30),
        make_record(turn=2, prompt_tokens=300, reused_prompt_tokens=None),
        make_record(turn=2, prompt_tokens=50, reused_prompt_tokens=50, error="x"),
    ]
    assert cache_reuse_by_turn(records) == {0: 0.0, 1: pytest.approx(180 / 300), 2: None}
