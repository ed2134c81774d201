"""A sharded gpt-oss decodes with the eager step, and says so once."""

from __future__ import annotations

import logging
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony.generate import load_model
from mlx_harmony.generate.compiled import compiled_decode_unsupported_reason


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_sharded_model_falls_back_to_the_eager_step_with_one_notice(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = load_model(tiny_model_dir).model  # a copy of its own: this test marks it sharded
    assert compiled_decode_unsupported_reason(model, model.make_cache()) is None
    for layer in model.model.layers:
        layer.mlp.sharding_group = mx.distributed.init()  # what Model.shard(group) sets
    with caplog.at_level(logging.WARNING, logger="mlx_harmony.generate"):
        for _ in range(2):
            reason = compiled_decode_unsupported_reason(model, model.make_cache())
            assert reason == "the model is sharded"
    notices = [r.getMessage() for r in caplog.records]
    assert notices == [
        "the compiled decode step does not run on a sharded (tensor-parallel) model; "
        "decoding with the eager step"
    ]
