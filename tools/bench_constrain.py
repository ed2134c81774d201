"""What structured outputs cost: decode tokens/s with and without a JSON-schema constraint at
batch 1 (`TokenGenerator`) and at 8 streams (`BatchTokenGenerator`) on the demo model (side by
side, alternating), and the time to first token a constraint adds (first use and cached).
`--engines` also times llguidance against xgrammar on the o200k_harmony vocabulary (grammar
compile, mask per token); xgrammar is optional (``pip install xgrammar``).

    uv run python tools/bench_constrain.py [--model PATH] [--rounds 3] [--streams 8] [--engines]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "maxLength": 24},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "email", "role", "tags", "address"],
    "additionalProperties": False,
}
DOC = {
    "name": "Ada Lovelace",
    "age": 36,
    "email": "ada@example.com",
    "role": "admin",
    "tags": ["math", "poetry", "engines"],
    "address": {"city": "London", "zip": "12345"},
}


def _decode(generator: Any, prompt: list[int], spec: Any, seed: int, max_tokens: int) -> Any:
    """One sampled run (`spec` None: free); a free run ignores stop tokens so that it decodes
    as many tokens as the constrained one (same seed, same length: like for like). The final
    event's stats."""
    from mlx_harmony.sampling import SamplingParams

    events = list(
        generator.stream(
            prompt_tokens=prompt,
            sampling=SamplingParams(temperature=1.0, seed=seed),
            max_tokens=max_tokens,
            stop_tokens=None if spec is not None else (),
            constraint=spec,
            detokenize=False,
        )
    )
    return events[-1].stats


def bench_decode(generator: Any, rounds: int) -> None:
    from mlx_harmony.generate.constrain import (
        ConstraintSpec,
        clear_constraint_cache,
        compile_constraint,
        prepare_tokenizer,
    )
    from mlx_harmony.harmony_format import Message, render_prompt

    prompt = render_prompt([Message.user("Describe a person as JSON.")])
    spec = ConstraintSpec("json_schema", schema=SCHEMA)
    start = time.perf_counter()
    prepare_tokenizer(generator.tokenizer)
    view_s = time.perf_counter() - start
    first = _decode(generator, prompt, spec, 0, 400)
    length = first.completion_tokens
    print(f"the constrained completion (seed 0) has {length} tokens, {first.stop_reason}")
    free, constrained, ratios = [], [], []
    for r in range(rounds):
        order = ["free", "constrained"] if r % 2 == 0 else ["constrained", "free"]
        speeds = {}
        for variant in order:
            stats = _decode(
                generator, prompt, spec if variant == "constrained" else None, 0, length
            )
            speeds[variant] = stats.decode_tokens_per_s
            print(
                f"round {r} {variant:11s} {stats.completion_tokens:4d} tokens "
                f"{stats.decode_tokens_per_s:7.1f} tok/s  "
                f"ttft {stats.time_to_first_token_s * 1e3:6.1f} ms"
            )
        free.append(speeds["free"])
        constrained.append(speeds["constrained"])
        ratios.append(speeds["constrained"] / speeds["free"])
    print(
        f"decode tok/s, batch 1: free {statistics.median(free):.1f}, constrained "
        f"{statistics.median(constrained):.1f}, constrained/free {statistics.median(ratios):.3f}"
    )

    # Added time to first token: compile (first use) or cache lookup, plus the first mask.
    firsts, cached = [], []
    for _ in range(rounds):
        clear_constraint_cache()
        t = time.perf_counter()
        constraint = compile_constraint(spec, generator.tokenizer).new()
        constraint.allowed_mask()
        firsts.append(time.perf_counter() - t)
        t = time.perf_counter()
        constraint = compile_constraint(spec, generator.tokenizer).new()
        constraint.allowed_mask()
        cached.append(time.perf_counter() - t)
    print(
        f"added time to first token: tokenizer view once per model {view_s:.2f} s; "
        f"first use of a schema {statistics.median(firsts) * 1e3:.2f} ms; "
        f"cached {statistics.median(cached) * 1e3:.3f} ms"
    )


def bench_streams(generator: Any, streams: int, rounds: int) -> None:
    """`streams` requests at once in one `BatchTokenGenerator`, all free or all constrained
    (seeds 0..streams-1, each free stream as long as its constrained twin): aggregate decode
    tokens/s over the wall time of the round."""
    from mlx_harmony.generate.constrain import ConstraintSpec
    from mlx_harmony.harmony_format import Message, render_prompt

    prompt = render_prompt([Message.user("Describe a person as JSON.")])
    spec = ConstraintSpec("json_schema", schema=SCHEMA)

    def run(constrained: bool, lengths: list[int]) -> tuple[float, list[Any]]:
        results: list[Any] = [None] * streams

        def one(i: int) -> None:
            results[i] = _decode(generator, prompt, spec if constrained else None, i, lengths[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
        t = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - t
        return sum(r.completion_tokens for r in results) / wall, results

    _, firsts = run(True, [400] * streams)
    lengths = [r.completion_tokens for r in firsts]
    stops = [str(r.stop_reason) for r in firsts]
    print(f"{streams} streams: constrained completions of {lengths} tokens ({stops})")
    free, constrained, ratios = [], [], []
    for r in range(rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        speeds = {}
        for variant in order:
            speeds[variant], _ = run(variant, lengths)
            name = "constrained" if variant else "free"
            print(f"round {r} {name:11s} {streams} streams {speeds[variant]:7.1f} tok/s in all")
        free.append(speeds[False])
        constrained.append(speeds[True])
        ratios.append(speeds[True] / speeds[False])
    print(
        f"decode tok/s, {streams} streams (all together): free {statistics.median(free):.1f}, "
        f"constrained {statistics.median(constrained):.1f}, constrained/free "
        f"{statistics.median(ratios):.3f}"
    )


def bench_engines(tokenizer: Any, rounds: int) -> None:
    """Compile time and mask time per token, walking DOC's tokens through the schema."""
    import llguidance
    import llguidance.hf
    import llguidance.numpy

    hf = tokenizer._tokenizer
    ids = hf.encode(json.dumps(DOC), add_special_tokens=False)
    vocab = len(hf)
    t = time.perf_counter()
    llt = llguidance.hf.from_tokenizer(hf, n_vocab=vocab)
    print(f"llguidance tokenizer view: {time.perf_counter() - t:.2f} s ({vocab} tokens)")

    def llg() -> tuple[float, list[float]]:
        t = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
        matcher = llguidance.LLMatcher(llt, grammar)
        mask = llguidance.numpy.allocate_token_bitmask(1, vocab)
        llguidance.numpy.fill_next_token_bitmask(matcher, mask, 0)
        compile_s = time.perf_counter() - t
        times = []
        for token in ids:
            assert matcher.consume_token(token), matcher.get_error()
            t = time.perf_counter()
            llguidance.numpy.fill_next_token_bitmask(matcher, mask, 0)
            times.append(time.perf_counter() - t)
        return compile_s, times

    engines = {"llguidance": llg}
    try:
        import xgrammar as xgr
    except ImportError:
        print("xgrammar is not installed: pip install xgrammar to compare")
    else:
        t = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab)
        print(f"xgrammar tokenizer info: {time.perf_counter() - t:.2f} s")

        def xg() -> tuple[float, list[float]]:
            compiler = xgr.GrammarCompiler(info, cache_enabled=False)
            t = time.perf_counter()
            matcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(SCHEMA)))
            mask = xgr.allocate_token_bitmask(1, vocab)
            matcher.fill_next_token_bitmask(mask)
            compile_s = time.perf_counter() - t
            times = []
            for token in ids:
                assert matcher.accept_token(token)
                t = time.perf_counter()
                matcher.fill_next_token_bitmask(mask)
                times.append(time.perf_counter() - t)
            return compile_s, times

        engines["xgrammar"] = xg
    results: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in engines}
    for r in range(rounds):
        names = list(engines) if r % 2 == 0 else list(reversed(engines))
        for name in names:
            compile_s, times = engines[name]()
            results[name][0].append(compile_s)
            results[name][1].extend(times)
    print(f"schema: 6 fields, nested object, array, enum; {len(ids)} tokens walked per round")
    for name, (compiles, masks) in results.items():
        print(
            f"{name:10s} compile + first mask {statistics.median(compiles) * 1e3:7.2f} ms | "
            f"mask per token mean {statistics.mean(masks) * 1e6:6.1f} us, median "
            f"{statistics.median(masks) * 1e6:6.1f} us, max {max(masks) * 1e6:7.1f} us"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an MLX model folder (default: the demo model)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", action="store_true", help="also compare the engines")
    parser.add_argument(
        "--streams", type=int, default=8, help="streams at once in the batch run (0: skip it)"
    )
    args = parser.parse_args()
    from mlx_harmony.generate import BatchTokenGenerator, GeneratorOptions, TokenGenerator

    if args.model:
        path = args.model
    else:
        from mlx_harmony.demo_model import ensure_demo_model

        path = ensure_demo_model()
    # Every run with a seed starts from it: a variant's rounds decode the same tokens.
    options = GeneratorOptions(loop_detection="off", reseed_each_turn=True)
    generator = TokenGenerator(path, options)
    if args.engines:
        bench_engines(generator.tokenizer, args.rounds)
    bench_decode(generator, args.rounds)
    if args.streams:
        generator.close()
        with BatchTokenGenerator(generator.loaded, options, max_batch_size=args.streams) as batch:
            bench_streams(batch, args.streams, args.rounds)


if __name__ == "__main__":
    main()
