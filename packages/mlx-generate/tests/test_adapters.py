"""`load_model(adapter_path=...)`: mlx-lm adapter folders, applied through mlx-lm."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_harmony.generate import LoadedModel, ModelLoadError, generate, load_model

LORA = {"rank": 4, "scale": 20.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "self_attn.v_proj"]}


def _write_adapter(model_dir: Path, folder: Path, *, b_scale: float | None) -> Path:
    """An adapter folder in mlx_lm.lora's layout: LoRA layers on a frozen model, the trainable
    parameters saved. `b_scale=None` keeps mlx-lm's init (B = 0: the adapter adds nothing)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model = load_model(model_dir).model
    model.freeze()
    linear_to_lora_layers(model, 2, LORA)
    weights = dict(tree_flatten(model.trainable_parameters()))
    assert weights
    assert all(k.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for k in weights)
    if b_scale is not None:
        mx.random.seed(7)
        weights = {
            k: mx.random.normal(v.shape) * b_scale if k.endswith("lora_b") else v
            for k, v in weights.items()
        }
    folder.mkdir(parents=True)
    mx.save_safetensors(str(folder / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": LORA}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_a_zero_adapter_gives_the_base_models_greedy_tokens(
    tiny_model_dir: Path,
    tiny: LoadedModel,
    tmp_path: Path,
    assert_same_tokens: Callable[..., None],
) -> None:
    folder = _write_adapter(tiny_model_dir, tmp_path / "zero", b_scale=None)
    adapted = load_model(tiny_model_dir, adapter_path=folder)
    assert adapted.adapter_path == folder
    assert any("lora_a" in k for k, _ in tree_flatten(adapted.model.parameters()))
    prompt = list(range(300, 500))
    want = generate(tiny.model, tiny.tokenizer, prompt, max_tokens=48, stop_tokens=[]).tokens
    got = generate(adapted.model, adapted.tokenizer, prompt, max_tokens=48, stop_tokens=[]).tokens
    assert_same_tokens(tiny, got, want)


@pytest.mark.slow
def test_a_non_zero_adapter_changes_the_logits(
    tiny_model_dir: Path, tiny: LoadedModel, tmp_path: Path
) -> None:
    folder = _write_adapter(tiny_model_dir, tmp_path / "trained", b_scale=0.05)
    adapted = load_model(tiny_model_dir, adapter_path=str(folder))
    tokens = mx.array([list(range(300, 340))])
    diff = mx.abs(adapted.model(tokens) - tiny.model(tokens)).max().item()
    assert diff > 1e-2


def test_missing_or_malformed_adapter_folders_are_named(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match=r"adapter folder '.*nowhere' does not exist"):
        load_model(tiny_model_dir, adapter_path=tmp_path / "nowhere")
    file = tmp_path / "file.safetensors"
    file.write_text("")
    with pytest.raises(ModelLoadError, match="is a file; pass its folder"):
        load_model(tiny_model_dir, adapter_path=file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"adapter_config\.json is missing"):
        load_model(tiny_model_dir, adapter_path=empty)
    (empty / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"adapter_config\.json is not valid JSON"):
        load_model(tiny_model_dir, adapter_path=empty)
    (empty / "adapter_config.json").write_text(json.dumps({"num_layers": 2}))
    with pytest.raises(ModelLoadError, match="missing lora_parameters"):
        load_model(tiny_model_dir, adapter_path=empty)
    (empty / "adapter_config.json").write_text(
        json.dumps({"num_layers": 2, "lora_parameters": {"rank": 4, "alpha": 8, "dropout": 0}})
    )
    with pytest.raises(ModelLoadError, match=r"missing lora_parameters\.scale"):
        load_model(tiny_model_dir, adapter_path=empty)
    (empty / "adapter_config.json").write_text(
        json.dumps({"num_layers": 2, "lora_parameters": LORA})
    )
    with pytest.raises(ModelLoadError, match=r"adapters\.safetensors is missing"):
        load_model(tiny_model_dir, adapter_path=empty)


def test_adapter_weights_for_another_model_are_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "wrong"
    folder.mkdir()
    mx.save_safetensors(
        str(folder / "adapters.safetensors"),
        {"model.layers.1.self_attn.q_proj.lora_a": mx.zeros((999, 4))},
    )
    (folder / "adapter_config.json").write_text(
        json.dumps({"num_layers": 2, "lora_parameters": LORA})
    )
    with pytest.raises(
        ModelLoadError,
        match=rf"(?s)could not apply the adapters in {re.escape(str(folder))}.*\(999, 4\)",
    ):
        load_model(tiny_model_dir, adapter_path=folder)
