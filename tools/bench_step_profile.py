"""Where a decode step's time goes: graph building vs evaluation, and how many kernels.

    python tools/bench_step_profile.py --shape tiny
    python tools/bench_step_profile.py --shape gpt-oss-20b --bits 4 [--mode mxfp4] [--thin]

For one random gpt-oss model and a prompt of `--prompt-tokens`, side by side in one run:

- `eager`: mlx-lm's step (the model over its own caches, then an argmax), as our eager loop
  and mlx-lm's `generate_step` run it;
- `compiled`: mlx-generate's compiled static-shape step (`StaticDecoder`).

For each, a synchronous loop of `--steps` steps times apart the Python that builds a step's
graph (until the step's arrays exist) and its evaluation (`mx.eval`, waiting for the device);
a pipelined loop (`mx.async_eval` of step n+1 before waiting on step n, as both generators run)
gives the time per token users see. Medians over the steps. The graph census counts the
primitives of one step's graph (from `mx.export_to_dot`): all of them, and the ones that launch
work on the device (views such as reshapes, broadcasts and slices do not); `mx.compile` fuses
chains of element-wise primitives into one. It also reports the bytes of weights a step reads
(everything but the experts, plus the `experts_per_tok` experts of each layer's router).

`--thin` adds a model of the same depth and vocabulary with hidden size 256: if it costs
about the same per step, the step is bound by the number of kernels, not by bandwidth.

Imports only mlx, mlx-lm and this repo's packages (no uv needed on a GPU machine).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import _build  # a sibling script, not a package

_VIEWS = frozenset(
    {
        "Broadcast",
        "Reshape",
        "Squeeze",
        "ExpandDims",
        "Slice",
        "Transpose",
        "AsStrided",
        "Unflatten",
    }
)
"""Primitives that make a view of their input: no kernel of their own."""


def census(outputs: list[mx.array]) -> dict[str, Any]:
    """Primitive counts of the graph that computes `outputs` (evaluated inputs are leaves)."""
    with tempfile.NamedTemporaryFile("r", suffix=".dot") as dot:
        mx.export_to_dot(dot.name, *outputs)
        labels = re.findall(r'label ="([^"]+)", shape=rectangle', Path(dot.name).read_text())
    counts = collections.Counter(labels)
    kernels = sum(n for name, n in counts.items() if name not in _VIEWS)
    fused = sum(n for name, n in counts.items() if name.startswith("Compiled"))
    top = dict(counts.most_common(12))
    return {"primitives": len(labels), "kernels": kernels, "fused": fused, "top": top}


def _step_weight_bytes(model: Any) -> int:
    """Bytes of weights one decode step reads: all but the experts, and top-k experts a layer."""
    from mlx.utils import tree_flatten

    total = 0
    for layer in model.model.layers:
        experts = layer.mlp.experts
        share = layer.mlp.num_experts_per_tok / layer.mlp.num_local_experts
        total += int(sum(v.nbytes for _, v in tree_flatten(experts.parameters())) * share)
        total += sum(v.nbytes for _, v in tree_flatten(layer.self_attn.parameters()))
    for part in (model.model.embed_tokens, model.model.norm, model.lm_head):
        total += sum(v.nbytes for _, v in tree_flatten(part.parameters()))
    return total - model.model.embed_tokens.weight.nbytes  # one row of the embedding is read


def _prefilled(model: Any, prompt: list[int]) -> tuple[list[Any], mx.array]:
    """mlx-lm caches holding the prompt, and its last token's greedy next token."""
    cache = model.make_cache()
    logits = model(mx.array(prompt)[None], cache=cache)
    token = mx.argmax(logits[:, -1, :], axis=-1)
    mx.eval(token, [c.state for c in cache])
    return cache, token


class _Eager:
    def __init__(self, model: Any, prompt: list[int]) -> None:
        self.model = model
        self.cache, self.token = _prefilled(model, prompt)

    def step(self, token: mx.array) -> tuple[mx.array, list[mx.array]]:
        logits = self.model(token[None], cache=self.cache)
        out = mx.argmax(logits[:, -1, :], axis=-1)
        return out, [a for c in self.cache for a in (c.keys, c.values)]


class _Compiled:
    def __init__(self, model: Any, prompt: list[int]) -> None:
        from mlx_harmony.generate.compiled import StaticDecoder

        cache, self.token = _prefilled(model, prompt)
        self.decoder = StaticDecoder(model, cache, output="token")

    def step(self, token: mx.array) -> tuple[mx.array, list[mx.array]]:
        out = self.decoder.step(token)
        return out, [*self.decoder._keys, *self.decoder._values]


def profile(model: Any, prompt: list[int], steps: int, variant: str) -> dict[str, Any]:
    """Build and evaluation times (ms, medians), pipelined ms/token and the step's census."""
    runner = (_Eager if variant == "eager" else _Compiled)(model, prompt)
    token = runner.token
    for _ in range(4):  # warm-up: kernels and the compiled trace are made here
        token, state = runner.step(token)
        mx.eval(token, state)
    build, evaluate = [], []
    graph: dict[str, Any] = {}
    for i in range(steps):
        t0 = time.perf_counter()
        token, state = runner.step(token)
        t1 = time.perf_counter()
        if i == 0:
            graph = census([token, *state])
        t2 = time.perf_counter()
        mx.eval(token, state)
        t3 = time.perf_counter()
        build.append(t1 - t0)
        evaluate.append(t3 - t2)
    # Pipelined, as the generators run: step n+1 is queued before step n is waited on.
    token, state = runner.step(token)
    mx.async_eval(token, state)
    start = time.perf_counter()
    for _ in range(steps):
        following, state = runner.step(token)
        mx.async_eval(following, state)
        token.item()
        token = following
    token.item()
    per_token = (time.perf_counter() - start) / steps
    ms = 1000.0
    return {
        "build_ms": statistics.median(build) * ms,
        "eval_ms": statistics.median(evaluate) * ms,
        "pipelined_ms_per_token": per_token * ms,
        "tokens_per_s": 1 / per_token,
        **graph,
    }


def _thin(args: argparse.Namespace) -> Any:
    from mlx_harmony.demo_model.random_model import PRESETS, build_random_model

    shape = {**PRESETS[args.shape], "hidden_size": 256, "intermediate_size": 256}
    dtype = getattr(mx, args.dtype) if args.dtype else None
    model, _ = build_random_model(shape, seed=0, dtype=dtype, quantize_bits=args.bits)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--shape", default="tiny", help="random gpt-oss preset")
    parser.add_argument("--dtype", default=None, help="bfloat16, float32 (default: by device)")
    parser.add_argument("--bits", type=int, default=None, help="quantize the linear layers")
    parser.add_argument("--mode", default="affine", choices=["affine", "mxfp4"])
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--thin", action="store_true", help="also a hidden-size-256 model")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    args.model, args.head_dim, args.cache_dir = None, None, None
    if args.mode == "mxfp4" and not args.bits:
        args.bits = 4
    loaded, label = _build(args)
    prompt = [int(t) for t in mx.random.randint(0, 200_000, (args.prompt_tokens,)).tolist()]
    models = {"": loaded.model}
    if args.thin:
        models["thin "] = _thin(args)
    results: dict[str, Any] = {"model": label, "device": str(mx.default_device())}
    print(f"{label} on {mx.default_device()}, prompt {args.prompt_tokens}, {args.steps} steps")
    for prefix, model in models.items():
        results[f"{prefix}weight_bytes_per_step"] = _step_weight_bytes(model)
        for variant in ("eager", "compiled"):
            r = results[f"{prefix}{variant}"] = profile(model, prompt, args.steps, variant)
            print(
                f"{prefix}{variant:9s} build {r['build_ms']:6.2f} ms  eval {r['eval_ms']:6.2f} ms"
                f"  pipelined {r['pipelined_ms_per_token']:6.2f} ms/token "
                f"({r['tokens_per_s']:6.1f} tok/s)  primitives {r['primitives']}, kernels "
                f"{r['kernels']} ({r['fused']} fused)"
            )
        eager, compiled = results[f"{prefix}eager"], results[f"{prefix}compiled"]
        ratio = compiled["tokens_per_s"] / eager["tokens_per_s"]
        print(
            f"{prefix}compiled/eager tokens/s {ratio:.2f}x;"
            f" weights read per step {results[f'{prefix}weight_bytes_per_step'] / 2**20:.0f} MiB"
        )
        print(f"{prefix}compiled step's most frequent primitives: {compiled['top']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
