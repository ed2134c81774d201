"""``mlx-harmony-cache-prompt``: compute the start of every conversation once and save its KV
cache, for ``--prompt-cache-file`` (mlx-lm's ``mlx_lm.cache_prompt``).

The cached tokens are what every later prompt of the same model, prompt config and tools
starts with: the system and developer messages and the header of the first user message,
followed by the text of ``--prompt-file`` / ``--prompt`` when given (then the first user
message must start with that text). They are found by rendering two conversations that differ
only after that point and keeping what they share, so any chat template works. For gpt-oss the
file also holds sliding-window checkpoints at the message boundaries, so a conversation that
shares only the instructions still reuses them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .launch import CliError, locate_model, make_backend, prepare
from .options import GENERATION_FLAGS, SAMPLING_FLAGS, add_common_options, parse_args

__all__ = ["build_parser", "cached_prefix", "main"]

_PROBES = ("\x01", "\x02")
"""Two first-message continuations that share nothing: what the renders share is the prefix."""
_IGNORED = ("--max-tokens", "--reasoning-effort", "--loop-detection", "--performance-mode")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-harmony-cache-prompt",
        description="Save the KV cache of the prompt every conversation starts with (the system "
        "and developer messages, and optionally the start of the first user message) for "
        "--prompt-cache-file.",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="Where to write (.safetensors)."
    )
    text = parser.add_mutually_exclusive_group()
    text.add_argument(
        "--prompt-file",
        metavar="FILE",
        help="Text the first user message starts with (a document to ask about).",
    )
    text.add_argument("--prompt", metavar="TEXT", help="Same, given inline.")
    add_common_options(parser)
    return parser


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> list[int]:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return list(a[:n])


def cached_prefix(render: Callable[[str], Sequence[int]], text: str = "") -> list[int]:
    """The tokens every conversation whose first user message starts with `text` begins with:
    the common prefix of two renders whose first messages continue `text` differently."""
    first, second = (render(text + probe) for probe in _PROBES)
    return _common_prefix(first, second)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flags that cannot change a cached prompt are refused, not ignored."""
    given = [flag for flag, name in SAMPLING_FLAGS.items() if getattr(args, name) is not None]
    given += [flag for flag in _IGNORED if getattr(args, GENERATION_FLAGS[flag]) is not None]
    given += ["--server"] if args.server else []
    given += ["--prompt-cache-file"] if args.prompt_cache_file else []
    given += ["--json-schema / --grammar"] if args.constraint is not None else []
    given += ["--debug"] if args.debug or args.debug_tokens or args.debug_file else []
    if given:
        parser.error(f"{', '.join(given)} do not change a cached prompt; leave them out")
    if not args.output.endswith(".safetensors"):
        parser.error(f"-o {args.output}: the file name must end in .safetensors")
    if not Path(args.output).expanduser().parent.is_dir():
        parser.error(f"-o {args.output}: its folder does not exist")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    for name in ("chat", "load_conversation", "save_conversation"):
        setattr(args, name, None)
    _check(parser, args)
    closers: list[Callable[[], Any]] = []
    try:
        text = args.prompt or ""
        if args.prompt_file is not None:
            try:
                text = Path(args.prompt_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise CliError(f"--prompt-file: cannot read it: {error}", exit_status=2) from None
        return _write(args, text, closers)
    except CliError as error:
        print(f"mlx-harmony-cache-prompt: {error}", file=sys.stderr)
        return error.exit_status
    finally:
        for close in reversed(closers):
            close()


def _write(args: argparse.Namespace, text: str, closers: list[Callable[[], Any]]) -> int:
    from mlx_harmony.controller import Turn
    from mlx_harmony.generate.prefill import harmony_message_boundaries
    from mlx_harmony.generate.prompt_cache_file import save_prompt_cache_file
    from mlx_harmony.harmony_format import Message
    from mlx_harmony.tools import ToolDeclarations

    launch = prepare(args, chat_files=False)
    backend: Any = make_backend(launch, locate_model(launch), on_close=closers.append)
    generator = backend.generator
    config = launch.config.effective()
    use_tools = bool(backend.tools) and backend.adapter.supports_tools  # as count_tokens does
    tools = backend.tools.declarations() if use_tools else ToolDeclarations()

    def render(first: str) -> list[int]:
        turns = [Turn(Message.user(first))]
        return list(backend.adapter.render(turns, config=config, tools=tools))

    prompt = cached_prefix(render, text)
    if len(prompt) < 2:
        raise CliError("the conversations of this model share no prompt to cache")
    from mlx_harmony.generate.prompt_cache_file import compute_prompt_cache

    options = generator.options
    checkpoints = harmony_message_boundaries(prompt) if generator.is_harmony else []
    cache, snapshots = compute_prompt_cache(
        generator.loaded,
        prompt,
        prefill_step_size=generator.prefill_step_size,
        kv_bits=options.kv_bits,
        kv_group_size=options.kv_group_size,
        quantized_kv_start=options.quantized_kv_start,
        checkpoints=checkpoints,
    )
    path = save_prompt_cache_file(
        args.output,
        loaded=generator.loaded,
        tokens=cache.tokens,
        caches=cache.caches,
        single_tail=True,
        kv_bits=options.kv_bits,
        kv_group_size=options.kv_group_size,
        checkpoints=snapshots,
    )
    print(
        f"mlx-harmony-cache-prompt: {len(prompt)} tokens cached in {path} "
        f"({path.stat().st_size / 2**20:.1f} MiB, {len(snapshots)} checkpoints)",
        file=sys.stderr,
    )
    return 0
