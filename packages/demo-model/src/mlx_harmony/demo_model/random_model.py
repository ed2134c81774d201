"""Random-weight models of any gpt-oss shape, for speed measurements without a download."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models.gpt_oss import Model, ModelArgs

from .tokenizer import VOCAB_SIZE, write_tokenizer_files

__all__ = [
    "PRESETS",
    "build_random_model",
    "default_dtype",
    "gpt_oss_config",
    "save_model",
    "save_random_llama",
]

_YARN = {
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "factor": 32.0,
    "original_max_position_embeddings": 4096,
    "rope_type": "yarn",
    "truncate": False,
}

# Shapes of the published checkpoints (their config.json), minus quantization.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt-oss-20b": {"num_hidden_layers": 24, "num_local_experts": 32},
    "gpt-oss-120b": {"num_hidden_layers": 36, "num_local_experts": 128},
    "tiny": {
        "num_hidden_layers": 2,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "hidden_size": 64,
        "intermediate_size": 64,
        "head_dim": 16,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
# The trained demo model: "tiny" with a 16-token sliding window in its first layer, which sees
# little more than the last user message and so learns fast what the user asks.
PRESETS["demo"] = {**PRESETS["tiny"], "sliding_window": 16}


def default_dtype() -> mx.Dtype:
    """bfloat16 on a GPU; float32 on the CPU, whose GatherMM (the MoE layers) refuses bf16."""
    return mx.bfloat16 if mx.default_device() == mx.gpu else mx.float32


def gpt_oss_config(shape: str | dict[str, Any] = "tiny", **overrides: Any) -> dict[str, Any]:
    """A full gpt-oss config.json dict: a preset name or a dict of fields, then overrides."""
    if isinstance(shape, str):
        if shape not in PRESETS:
            raise ValueError(f"unknown gpt-oss shape {shape!r}; use one of {sorted(PRESETS)}")
        shape = PRESETS[shape]
    config: dict[str, Any] = {
        "model_type": "gpt_oss",
        "architectures": ["GptOssForCausalLM"],
        "num_hidden_layers": 24,
        "num_local_experts": 32,
        "num_experts_per_tok": 4,
        "experts_per_token": 4,
        "vocab_size": VOCAB_SIZE,
        "rms_norm_eps": 1e-05,
        "hidden_size": 2880,
        "intermediate_size": 2880,
        "head_dim": 64,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "sliding_window": 128,
        "rope_theta": 150000,
        "rope_scaling": dict(_YARN),
        "max_position_embeddings": 131072,
        "eos_token_id": 200002,
        "pad_token_id": 199999,
        "tie_word_embeddings": False,
    }
    config.update(shape)
    config.update(overrides)
    config["experts_per_token"] = config["num_experts_per_tok"]
    layers = config["num_hidden_layers"]
    if layers < 2:
        raise ValueError(f"gpt-oss needs at least 2 layers (sliding + full), got {layers}")
    config.setdefault(
        "layer_types",
        ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
    )
    return config


def build_random_model(
    shape: str | dict[str, Any] = "tiny",
    *,
    seed: int = 0,
    dtype: mx.Dtype | None = None,
    quantize_bits: int | None = None,
    group_size: int = 32,
    **overrides: Any,
) -> tuple[Model, dict[str, Any]]:
    """A gpt-oss `Model` with seeded random weights, evaluated, and its config."""
    config = gpt_oss_config(shape, **overrides)
    dtype = dtype or default_dtype()
    mx.random.seed(seed)
    args = ModelArgs.from_dict(config)
    model = Model(args)
    # Evaluate one block at a time: a 20B-shaped model initialises in float32 (4 bytes a
    # parameter) before the cast, which would not fit in GPU memory all at once. Small weights
    # keep activations finite in deep random stacks.
    blocks = [model.model.embed_tokens, model.model.norm, model.lm_head, *model.layers]
    for block in blocks:
        block.update(tree_map(lambda p: (p * 0.5).astype(dtype), block.parameters()))
        if hasattr(block, "self_attn"):
            block.self_attn.sinks = mx.zeros_like(block.self_attn.sinks)
        mx.eval(block.parameters())
    if quantize_bits is not None:
        nn.quantize(
            model,
            group_size=group_size,
            bits=quantize_bits,
            class_predicate=lambda _, m: (
                hasattr(m, "to_quantized") and not isinstance(m, nn.Embedding)
            ),
        )
        config["quantization"] = {"group_size": group_size, "bits": quantize_bits}
    mx.eval(model.parameters())
    return model, config


def save_model(model: nn.Module, config: dict[str, Any], folder: Path, *, cache_dir: Path) -> Path:
    """Write an MLX model folder that `mlx_lm.load` and our loader both read."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer_files(folder, cache_dir=cache_dir)
    return folder


def save_random_llama(folder: Path, *, cache_dir: Path, seed: int = 1, **overrides: Any) -> Path:
    """A tiny random-weight Llama folder in the Hugging Face layout, with the o200k_harmony
    tokenizer and its chat template: a model that is not gpt-oss (a Jinja template, plain KV
    caches) for tests and benchmarks of that path without a download. `overrides` change the
    config (hidden size, layers, EOS id, ...)."""
    from mlx_lm.models.llama import Model as Llama
    from mlx_lm.models.llama import ModelArgs as LlamaArgs

    config: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB_SIZE,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
        "eos_token_id": 199999,
        **overrides,
    }
    mx.random.seed(seed)
    model = Llama(LlamaArgs.from_dict(config))
    folder.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config))
    write_tokenizer_files(folder, cache_dir=cache_dir)
    return folder
