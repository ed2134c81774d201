"""The record format: its fields, round trips, and null (not 0) for what is unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mlx_harmony.bench import RunInfo, TurnRecord, read_records, write_records
from mlx_harmony.bench.targets import count_channel_tokens, final_text
from mlx_harmony.bench.testing import make_record
from mlx_harmony.harmony_format import get_encoding

FIELDS = [
    "prompt_id",
    "turn",
    "target",
    "category",
    "client",
    "prompt_tokens",
    "reused_prompt_tokens",
    "context_tokens",
    "ttft_s",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
    "completion_tokens",
    "reasoning_tokens",
    "stop_reason",
    "retries",
    "peak_memory_gb",
    "process_peak_rss_gb",
    "wall_s",
    "error",
]


def test_a_record_line_has_exactly_the_documented_fields() -> None:
    line = make_record().model_dump_json()
    assert list(json.loads(line)) == FIELDS


def test_unknown_metrics_default_to_null_not_zero() -> None:
    record = TurnRecord(prompt_id="p", turn=0, target="server")
    data = json.loads(record.model_dump_json())
    for name in FIELDS[5:]:
        assert data[name] is None, name
    assert record.e2e_tokens_per_s is None


@pytest.mark.parametrize("missing", ["prompt_id", "turn", "target"])
def test_identity_fields_are_required(missing: str) -> None:
    data = {"prompt_id": "p", "turn": 0, "target": "local"}
    del data[missing]
    with pytest.raises(ValidationError, match=missing):
        TurnRecord.model_validate(data)


def test_unknown_fields_and_negative_turns_are_rejected() -> None:
    with pytest.raises(ValidationError, match="tokens_per_second"):
        TurnRecord.model_validate(
            {"prompt_id": "p", "turn": 0, "target": "local", "tokens_per_second": 3}
        )
    with pytest.raises(ValidationError, match="turn"):
        TurnRecord(prompt_id="p", turn=-1, target="local")


def test_records_round_trip_through_jsonl(tmp_path: Path) -> None:
    records = [
        make_record(),
        make_record(prompt_id="p-2", turn=1, reasoning_tokens=None, reused_prompt_tokens=64),
        TurnRecord(prompt_id="p-3", turn=0, target="server", error="HTTP 500: boom", wall_s=0.2),
    ]
    path = tmp_path / "records.jsonl"
    assert write_records(path, records) == 3
    assert read_records(path) == records
    assert read_records(tmp_path) == records, "a run folder reads its records.jsonl"
    lines = path.read_text().splitlines()
    assert json.loads(lines[1])["reasoning_tokens"] is None
    assert json.loads(lines[2])["error"] == "HTTP 500: boom"


def test_a_broken_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text(make_record().model_dump_json() + "\n{not json}\n")
    with pytest.raises(ValueError, match=r"records.jsonl:2"):
        read_records(path)


@given(
    st.builds(
        TurnRecord,
        prompt_id=st.text(min_size=1, max_size=12),
        turn=st.integers(0, 9),
        target=st.sampled_from(["local", "server", "mlx-lm", "mlx-lm-server"]),
        prompt_tokens=st.none() | st.integers(0, 10**6),
        ttft_s=st.none() | st.floats(0, 1e4, allow_nan=False),
        decode_tokens_per_s=st.none() | st.floats(0, 1e5, allow_nan=False),
        error=st.none() | st.text(max_size=30),
    )
)
def test_any_record_survives_a_json_round_trip(record: TurnRecord) -> None:
    assert TurnRecord.model_validate_json(record.model_dump_json()) == record


def test_end_to_end_rate_is_completion_over_wall_time() -> None:
    assert make_record(completion_tokens=30, wall_s=1.5).e2e_tokens_per_s == pytest.approx(20.0)
    assert make_record(error="x").e2e_tokens_per_s is None
    assert make_record(wall_s=0.0).e2e_tokens_per_s is None


def test_run_info_round_trips_and_keeps_extra_keys() -> None:
    info = RunInfo(
        target="server",
        model="/m",
        settings={"max_tokens": 128},
        versions={"mlx": "0.32.4"},
        aggregate_completion_tokens_per_s=12.5,
        startup_s=3.0,  # type: ignore[call-arg]
    )
    again = RunInfo.model_validate_json(info.model_dump_json())
    assert again == info
    assert again.model_extra == {"startup_s": 3.0}


def _harmony(text: str) -> list[int]:
    return list(get_encoding().encode(text, allowed_special="all"))


def test_channel_tokens_count_only_the_channel_content() -> None:
    thought, answer = _harmony("Bees build comb from wax."), _harmony(" Wax, from glands.")
    tokens = _harmony(
        "<|channel|>analysis<|message|>Bees build comb from wax.<|end|>"
        "<|start|>assistant<|channel|>final<|message|> Wax, from glands.<|return|>"
    )
    assert count_channel_tokens(tokens) == len(thought)
    assert count_channel_tokens(tokens, channel="final") == len(answer)
    # a commentary tool call: "commentary to=functions.get_time" is the commentary channel
    call = _harmony('<|channel|>commentary to=functions.get_time<|message|>{"tz": "UTC"}<|call|>')
    assert count_channel_tokens(call, channel="commentary") == len(_harmony('{"tz": "UTC"}'))
    assert count_channel_tokens(_harmony("no header at all")) == 0, "no header: no channel"


def test_channel_tokens_take_the_generator_texts() -> None:
    tokens = _harmony("<|channel|>analysis<|message|>Bees build comb.<|end|>")
    encoding = get_encoding()
    texts = [encoding.decode([t]) for t in tokens]
    content = len(_harmony("Bees build comb."))
    assert count_channel_tokens(tokens, texts) == count_channel_tokens(tokens) == content
    with pytest.raises(ValueError, match="2 texts for"):
        count_channel_tokens(tokens, texts[:2])


def test_a_character_split_over_tokens_counts_every_token() -> None:
    tokens = _harmony("<|channel|>analysis<|message|>🐝<|end|>")
    bee = _harmony("🐝")
    assert len(bee) > 1, "the bee emoji is more than one token"
    # the generator's text: nothing until the character is whole, then all of it
    head, tail = _harmony("<|channel|>analysis<|message|>"), _harmony("<|end|>")
    assert tokens == head + bee + tail
    texts = [get_encoding().decode([t]) for t in head]
    texts += [""] * (len(bee) - 1) + ["\U0001f41d"] + ["<|end|>"]
    assert count_channel_tokens(tokens, texts) == len(bee)


def test_final_text_takes_the_final_channel_of_a_raw_completion() -> None:
    raw = (
        "<|channel|>analysis<|message|>think<|end|>"
        "<|start|>assistant<|channel|>final<|message|> Hi there.<|return|>"
    )
    assert final_text(raw) == "Hi there."
    assert final_text("  plain answer ") == "plain answer"
