"""What a sharded chat needs beside the server's parts, over a group of one: the launch plan's
`broadcast_bytes`, and `ShardedBatchTokenGenerator.retune` after a chat's ``\\set``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony.generate.distributed import ShardedBatchTokenGenerator, broadcast_bytes
from mlx_harmony.generate.generator import GeneratorOptions
from mlx_harmony.generate.loop_detection import LoopDetectionMode
from mlx_harmony.generate.sharded import load_sharded


def test_rank_zero_gets_its_bytes_back() -> None:
    group = mx.distributed.init()
    assert broadcast_bytes(b'{"model": "x"}', group) == b'{"model": "x"}'
    assert broadcast_bytes(b"", group) == b""


def test_rank_zero_must_send_something() -> None:
    with pytest.raises(ValueError, match="rank 0 passes no data"):
        broadcast_bytes(None, mx.distributed.init())


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_retune_takes_rank_zero_options_and_refuses_engine_ones(tiny_model_dir: Path) -> None:
    loaded = load_sharded(tiny_model_dir, mx.distributed.init())
    options = GeneratorOptions(loop_detection="off")
    generator = ShardedBatchTokenGenerator(loaded, options, heartbeat_s=0.05)
    try:
        generator.retune(replace(options, loop_detection="full", clear_cache_interval=2))
        assert generator.loop_detector.mode is LoopDetectionMode.FULL
        assert generator.options.clear_cache_interval == 2
        assert generator._housekeeping.options.clear_cache_interval == 2
        with pytest.raises(ValueError, match="reseed_each_turn is fixed on every rank"):
            generator.retune(replace(options, reseed_each_turn=True))
        assert generator.options.clear_cache_interval == 2  # unchanged by the refusal
    finally:
        generator.close()
