"""What structured outputs cost, side by side in one run: decode tokens/s with and without a
JSON-schema constraint at batch 1 (`TokenGenerator`) and at 8 streams (`BatchTokenGenerator`),
alternating rounds, and with the mask computed as before (after the step, not beside it); the
time to first token a constraint adds (the tokenizer's llguidance view built on the first
constrained request against one started at model load, then a schema's first use and a cached
one). `--engines` also times llguidance against xgrammar on the o200k_harmony vocabulary
(grammar compile, mask per token); xgrammar is optional (``pip install xgrammar``).

    python tools/bench_constrain.py                        # the demo model
    python tools/bench_constrain.py --shape tiny           # a random tiny gpt-oss, CPU-sized
    python tools/bench_constrain.py --shape gpt-oss-20b --bits 4 --dtype bfloat16 --json OUT
    python tools/bench_constrain.py --model PATH [--rounds 3] [--streams 8] [--engines]

A random model is built in memory by ``tools/bench_generate.py``'s builder with the demo model's
o200k_harmony tokenizer: nothing is downloaded. Decoding starts in the final message (the
prompt ends with ``<|channel|>final<|message|>`` and the constraint consumes that header
first), so every constrained token is masked by the JSON schema: random weights would otherwise
write free analysis for ever. Both variants count tokens the same way: the first constrained
run (seed 0, at most `--max-tokens`) sets each stream's length; the free runs ignore stop tokens
and decode exactly that many, and the constrained runs repeat the same seed (so the same
tokens). Decode tokens/s is `GenerationStats.decode_tokens_per_s`; 8-stream rates are all
streams' tokens over the round's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
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
HEADER = "<|channel|>final<|message|>"


VARIANTS = ("free", "constrained", "waiting")
"""A free run; a constrained one; and one with the mask computed as before 2026-12-06
(`WaitingMask`), the side-by-side baseline for the overlap of mask and forward pass."""


class WaitingMask:
    """The constraint as its processor ran before: it submitted the forward pass, then read
    the new token through a slice of the history, a new lazy op that queues behind the forward
    pass, so the grammar advanced and the mask was filled only once the step had finished."""

    def __init__(self, constraint: Any, vocab_size: int) -> None:
        self.constraint = constraint
        self.vocab_size = vocab_size
        self.start: int | None = None

    def __call__(self, tokens: Any, logits: Any) -> Any:
        import mlx.core as mx

        from mlx_harmony.generate.constrain import apply_mask

        if self.start is None:
            self.start = tokens.size
        else:
            mx.async_eval(logits)
            self.constraint.advance(tokens[self.start + self.constraint.consumed :].tolist())
            if self.constraint.is_finished:
                return logits
        return apply_mask(logits, self.constraint.allowed_mask(), self.vocab_size)


class Bench:
    """The prompt, the compiled schema and one decode per call, for each of `VARIANTS`."""

    def __init__(self, generator: Any) -> None:
        from mlx_harmony.generate.constrain import ConstraintSpec
        from mlx_harmony.harmony_format import Message, render_prompt

        self.spec = ConstraintSpec("json_schema", schema=SCHEMA)
        self.prompt = render_prompt([Message.user("Describe a person as JSON.")])
        self.header = list(generator.tokenizer.encode(HEADER, add_special_tokens=False))
        if len(self.header) != 3:
            raise SystemExit(f"{HEADER!r} is not 3 special tokens in this tokenizer")

    def decode(
        self, generator: Any, variant: str, seed: int, max_tokens: int
    ) -> Any:  # GenerationStats
        """One sampled run from the final header; a free run ignores stop tokens."""
        from mlx_harmony.sampling import SamplingParams

        processors = None
        if variant != "free":
            compiled = generator.compile_constraint(self.spec)
            constraint = compiled.new(prefix=self.header)
            if variant == "waiting":
                constraint = WaitingMask(constraint, compiled.tokenizer.vocab_size)
            processors = [constraint]
        events = list(
            generator.stream(
                prompt_tokens=self.prompt + self.header,
                sampling=SamplingParams(temperature=1.0, seed=seed),
                max_tokens=max_tokens,
                stop_tokens=None if variant != "free" else (),
                logits_processors=processors,
                detokenize=False,
            )
        )
        return events[-1].stats

    def first_token_s(self, generator: Any, constrained: bool) -> float:
        """Wall time from the call to the first token, through the public path
        (``constraint=``: compile, or cache lookup, inside the call)."""
        from mlx_harmony.sampling import SamplingParams

        start = time.perf_counter()
        events = generator.stream(
            prompt_tokens=self.prompt,
            sampling=SamplingParams(temperature=1.0, seed=0),
            max_tokens=1,
            constraint=self.spec if constrained else None,
            detokenize=False,
        )
        next(events)
        elapsed = time.perf_counter() - start
        for _ in events:
            pass
        return elapsed


def _stamp(into: list[float], start: float) -> Any:
    """A done-callback that records the seconds since `start`."""
    return lambda _: into.append(time.perf_counter() - start)


def bench_ttft(generator: Any, bench: Bench, rounds: int) -> dict[str, float]:
    """Time to first token of the first constrained request after a model load, the view
    built on that request (before) against started at load (now), and of later requests."""
    from mlx_harmony.generate.constrain import (
        clear_constraint_cache,
        prepare_tokenizer_in_background,
    )

    tokenizer, harmony = generator.tokenizer, generator.is_harmony
    bench.first_token_s(generator, False)  # warm-up: kernels, prompt shapes
    samples: dict[str, list[float]] = {
        "free": [],
        "view_on_request": [],
        "view_at_load_request_at_once": [],
        "view_at_load_request_later": [],
        "cached_schema": [],
        "view_build_s": [],
    }
    for _ in range(rounds):
        samples["free"].append(bench.first_token_s(generator, False))
        clear_constraint_cache(tokenizer_views=True)  # as a fresh model load: nothing built
        samples["view_on_request"].append(bench.first_token_s(generator, True))
        clear_constraint_cache(tokenizer_views=True)
        future = prepare_tokenizer_in_background(tokenizer, harmony=harmony)  # as the server
        future.add_done_callback(_stamp(samples["view_build_s"], time.perf_counter()))
        samples["view_at_load_request_at_once"].append(bench.first_token_s(generator, True))
        future.result()
        clear_constraint_cache()  # the view stays: a request that comes after its build
        samples["view_at_load_request_later"].append(bench.first_token_s(generator, True))
        samples["cached_schema"].append(bench.first_token_s(generator, True))
    result = {name: statistics.median(values) for name, values in samples.items()}
    print(
        "first constrained request after a model load, time to first token (median of "
        f"{rounds}):\n"
        f"  view built on the request (before)          {result['view_on_request']:8.3f} s\n"
        f"  view started at load, request at once (now) "
        f"{result['view_at_load_request_at_once']:8.3f} s\n"
        f"  view started at load, request after it (now) "
        f"{result['view_at_load_request_later']:7.3f} s\n"
        f"  later request, schema cached                {result['cached_schema']:8.3f} s\n"
        f"  free request                                {result['free']:8.3f} s\n"
        f"  (the view alone: {result['view_build_s']:.2f} s)"
    )
    return result


def _rotated(r: int) -> list[str]:
    """Round `r`'s order of the variants: each goes first in turn."""
    k = r % len(VARIANTS)
    return [*VARIANTS[k:], *VARIANTS[:k]]


def _summary(speeds: dict[str, list[float]]) -> dict[str, float]:
    """Median tok/s of each variant and the median of each round's ratio to the free run."""
    out = {f"{v}_tok_s": statistics.median(speeds[v]) for v in VARIANTS}
    for v in VARIANTS[1:]:
        ratios = [a / b for a, b in zip(speeds[v], speeds["free"], strict=True)]
        out[f"{v}_over_free"] = statistics.median(ratios)
    return out


def _report(label: str, result: dict[str, Any]) -> None:
    print(
        f"decode tok/s, {label}: free {result['free_tok_s']:.1f} | constrained "
        f"{result['constrained_tok_s']:.1f} | before (mask after the step) "
        f"{result['waiting_tok_s']:.1f} | constrained/free {result['constrained_over_free']:.3f}"
        f" | before/free {result['waiting_over_free']:.3f}"
    )


def bench_decode(generator: Any, bench: Bench, rounds: int, max_tokens: int) -> dict[str, Any]:
    """Batch 1: every variant in each round, rotating, the same number of tokens each."""
    length = bench.decode(generator, "constrained", 0, max_tokens).completion_tokens
    speeds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    counts = set()
    for r in range(rounds):
        for variant in _rotated(r):
            stats = bench.decode(generator, variant, 0, length)
            counts.add(stats.completion_tokens)
            speeds[variant].append(stats.decode_tokens_per_s)
            print(
                f"round {r} {variant:11s} {stats.completion_tokens:4d} tokens "
                f"{stats.decode_tokens_per_s:8.1f} tok/s ({stats.stop_reason})"
            )
    result: dict[str, Any] = {"tokens": sorted(counts), **_summary(speeds)}
    _report(f"batch 1 ({'/'.join(map(str, result['tokens']))} tokens a run)", result)
    return result


def bench_streams(
    batch: Any, bench: Bench, streams: int, rounds: int, max_tokens: int
) -> dict[str, Any]:
    """`streams` requests at once in one `BatchTokenGenerator`, all of one variant (seeds
    0..streams-1): all streams' tokens over the wall time of the round."""

    def run(variant: str, lengths: list[int]) -> tuple[float, list[Any]]:
        results: list[Any] = [None] * streams

        def one(i: int) -> None:
            results[i] = bench.decode(batch, variant, i, lengths[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        return sum(r.completion_tokens for r in results) / wall, results

    _, firsts = run("constrained", [max_tokens] * streams)
    lengths = [r.completion_tokens for r in firsts]
    speeds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in _rotated(r):
            speed, results = run(variant, lengths)
            assert [s.completion_tokens for s in results] == lengths, "token counts differ"
            speeds[variant].append(speed)
            print(f"round {r} {variant:11s} {streams} streams {speed:8.1f} tok/s in all")
    result: dict[str, Any] = {"streams": streams, "tokens": lengths, **_summary(speeds)}
    _report(f"{streams} streams ({sum(lengths)} tokens a round)", result)
    return result


def bench_engines(tokenizer: Any, rounds: int) -> dict[str, Any]:
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
    out: dict[str, Any] = {}
    for name, (compiles, masks) in results.items():
        out[name] = {
            "compile_ms": statistics.median(compiles) * 1e3,
            "mask_us_mean": statistics.mean(masks) * 1e6,
            "mask_us_median": statistics.median(masks) * 1e6,
            "mask_us_max": max(masks) * 1e6,
        }
        print(
            f"{name:10s} compile + first mask {out[name]['compile_ms']:7.2f} ms | "
            f"mask per token mean {out[name]['mask_us_mean']:6.1f} us, median "
            f"{out[name]['mask_us_median']:6.1f} us, max {out[name]['mask_us_max']:7.1f} us"
        )
    return out


def _load(args: argparse.Namespace) -> tuple[Any, str]:
    """A model path or `LoadedModel`, and a label: `--model`, a random `--shape` (built by
    bench_generate's builder, with the demo model's tokenizer), or the demo model."""
    if args.shape:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_generate import _build

        builder_args = argparse.Namespace(
            model=None,
            shape=args.shape,
            dtype=args.dtype,
            bits=args.bits,
            mode="affine",
            group_size=args.group_size,
            head_dim=None,
            cache_dir=None,
        )
        return _build(builder_args)
    if args.model:
        return args.model, Path(args.model).name
    from mlx_harmony.demo_model import ensure_demo_model

    return ensure_demo_model(), "the demo model"


def _write_json(path: str, data: dict[str, Any]) -> None:
    """Atomically: a temporary file in the same folder, then a rename."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="an MLX model folder (default: the demo model)")
    source.add_argument("--shape", help="a random gpt-oss of this shape: tiny, gpt-oss-20b")
    parser.add_argument("--bits", type=int, default=None, help="quantize the random model")
    parser.add_argument("--group-size", type=int, default=32, help="with --bits")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16, float32 (--shape)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens a run, at most")
    parser.add_argument(
        "--streams", type=int, default=8, help="streams at once in the batch run (0: skip it)"
    )
    parser.add_argument("--engines", action="store_true", help="also compare the engines")
    parser.add_argument(
        "--no-ttft", action="store_true", help="skip the time-to-first-token part (decode only)"
    )
    parser.add_argument("--json", default=None, help="write the numbers to this file")
    args = parser.parse_args(argv)
    if not args.shape and (args.bits or args.dtype):
        parser.error("--bits and --dtype build a random model: give --shape too")
    if args.rounds < 1 or args.max_tokens < 1 or args.streams < 0:
        parser.error("--rounds and --max-tokens must be at least 1, --streams at least 0")

    import mlx.core as mx

    from mlx_harmony.generate import BatchTokenGenerator, GeneratorOptions, TokenGenerator

    model, label = _load(args)
    print(f"model: {label} on {mx.default_device()} (mlx {mx.__version__})")
    # Every run with a seed starts from it: a variant's rounds decode the same tokens. Random
    # weights loop: loop detection is off, the runs are bounded by --max-tokens.
    options = GeneratorOptions(loop_detection="off", reseed_each_turn=True)
    generator = TokenGenerator(model, options)
    bench = Bench(generator)
    results: dict[str, Any] = {
        "model": label,
        "device": str(mx.default_device()),
        "mlx": mx.__version__,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
    }
    if args.engines:
        results["engines"] = bench_engines(generator.tokenizer, args.rounds)
    if not args.no_ttft:
        results["ttft_s"] = bench_ttft(generator, bench, args.rounds)
    results["batch_1"] = bench_decode(generator, bench, args.rounds, args.max_tokens)
    if args.streams:
        loaded = generator.loaded
        generator.close()
        with BatchTokenGenerator(loaded, options, max_batch_size=args.streams) as batch:
            results["streams"] = bench_streams(
                batch, bench, args.streams, args.rounds, args.max_tokens
            )
    if args.json:
        _write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
