"""A tiny random gpt-oss (and a tiny Llama) built once per session: the loop, the caches and the
stop reasons need a real model's mechanics, not a trained one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony.generate import LoadedModel, load_model

ForceTokens = Callable[..., Callable[[mx.array, mx.array], mx.array]]


@pytest.fixture(scope="session")
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache: Path) -> Path:
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    model, config = build_random_model("tiny", seed=0)
    return save_model(
        model, config, tmp_path_factory.mktemp("tiny-gpt-oss"), cache_dir=tokenizer_cache
    )


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def llama_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache: Path) -> Path:
    """A non-Harmony model: plain KV caches, its own chat template, head_dim 64 for kv_bits."""
    from mlx_harmony.demo_model.random_model import save_random_llama

    return save_random_llama(
        tmp_path_factory.mktemp("tiny-llama"),
        cache_dir=tokenizer_cache,
        num_hidden_layers=2,
        num_attention_heads=1,  # one 64-wide head: half the embedding of two 64-wide heads
        num_key_value_heads=1,
    )


@pytest.fixture(scope="session")
def llama(llama_model_dir: Path) -> LoadedModel:
    return load_model(llama_model_dir)


@pytest.fixture(scope="session")
def force_tokens() -> ForceTokens:
    """A logits processor that makes the model emit `script` after a prompt of `prompt_len`
    tokens (then `then`, or the script again when cycle=True). Stateless: it reads the position
    from the token history, so it survives prompt-cache reuse."""

    def make(
        script: Sequence[int], *, prompt_len: int, cycle: bool = False, then: int | None = None
    ) -> Callable[[mx.array, mx.array], mx.array]:
        script = list(script)

        def processor(history: mx.array, logits: mx.array) -> mx.array:
            i = history.size - prompt_len
            if cycle:
                token = script[i % len(script)]
            elif i < len(script):
                token = script[i]
            elif then is not None:
                token = then
            else:
                return logits
            return mx.where(mx.arange(logits.shape[-1]) == token, 0.0, -mx.inf)[None]

        return processor

    return make


def _positions(cache: object, name: str) -> mx.array:
    """The keys (or values) a layer would attend with next, oldest first: all of a KVCache, the
    window of a RotatingKVCache (in time order, whatever its ring layout)."""
    from mlx_lm.models.cache import QuantizedKVCache, RotatingKVCache

    data = getattr(cache, name)
    if isinstance(cache, RotatingKVCache):
        ordered = cache._temporal_order(data)
        n = min(cache.offset, cache.max_size - 1)
        return ordered[..., ordered.shape[2] - n :, :]
    if isinstance(cache, QuantizedKVCache):
        data = mx.dequantize(*data, group_size=cache.group_size, bits=cache.bits)
    return data[..., : cache.offset, :]  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def assert_same_cache() -> Callable[[object, object], None]:
    """Two PromptCaches hold the same tokens and, layer by layer, the same keys and values for
    them. Chunking noise is ~1e-7; a missing or stale position in a sliding window perturbs the
    next layers by ~1e-3 even in the tiny random model, so 1e-4 tells them apart."""

    def check(a: object, b: object) -> None:
        assert a.tokens == b.tokens  # type: ignore[attr-defined]
        for i, (x, y) in enumerate(zip(a.caches, b.caches, strict=True)):  # type: ignore[attr-defined]
            assert x.offset == y.offset, f"layer {i}: offset {x.offset} != {y.offset}"
            for name in ("keys", "values"):
                px, py = _positions(x, name), _positions(y, name)
                assert px.shape == py.shape, f"layer {i} {name}: {px.shape} != {py.shape}"
                diff = mx.abs(px - py).max().item() if px.size else 0.0
                assert diff < 1e-4, f"layer {i} ({type(x).__name__}) {name} differ by {diff}"

    return check


@pytest.fixture(scope="session")
def assert_same_tokens() -> Callable[[LoadedModel, Sequence[int], Sequence[int]], None]:
    """Token-exact comparison that shows the decoded texts when it fails."""

    def check(loaded: LoadedModel, got: Sequence[int], want: Sequence[int]) -> None:
        if list(got) != list(want):
            first = next(
                (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                min(len(got), len(want)),
            )
            raise AssertionError(
                f"tokens differ from position {first} ({len(got)} vs {len(want)} tokens)\n"
                f"got:  {loaded.tokenizer.decode(list(got))!r}\n"
                f"want: {loaded.tokenizer.decode(list(want))!r}"
            )

    return check
