"""Command-line flags shared by `mlx-harmony-chat` and `mlx-harmony-generate`.

Every field of `mlx_harmony.sampling.SamplingParams` has one flag (``top_p`` is ``--top-p``),
made from the field itself, so a new sampling parameter gets its flag, its help and its
validation without touching this module. Values are checked by SamplingParams when the
command line is parsed, so a mistake is reported as a usage error naming the flag.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import ValidationError

from mlx_harmony.sampling import SamplingParams

from .settings import TOOL_NAMES, CommandLine

__all__ = [
    "GENERATION_FLAGS",
    "SAMPLING_FLAGS",
    "add_common_options",
    "build_chat_parser",
    "build_generate_parser",
    "command_line_from",
    "flag_name",
    "parse_args",
]


def flag_name(field: str) -> str:
    """``top_p`` -> ``--top-p``."""
    return "--" + field.replace("_", "-")


SAMPLING_FLAGS: dict[str, str] = {flag_name(name): name for name in SamplingParams.model_fields}
"""Each sampling flag and the SamplingParams field it sets."""

GENERATION_FLAGS: dict[str, str] = {
    "--max-tokens": "max_tokens",
    "--reasoning-effort": "reasoning_effort",
    "--performance-mode": "performance_mode",
    "--loop-detection": "loop_detection",
    "--max-kv-size": "max_kv_size",
    "--mlock": "mlock",
    "--kv-bits": "kv_bits",
    "--kv-group-size": "kv_group_size",
    "--quantized-kv-start": "quantized_kv_start",
    "--adapter-path": "adapter_path",
    "--chat-template": "chat_template",
    "--chat-template-args": "chat_template_args",
    "--prompt-cache-file": "prompt_cache_file",
    "--draft-model": "draft_model",
    "--num-draft-tokens": "num_draft_tokens",
    "--prompt-lookup": "prompt_lookup",
}
"""Flags that set other prompt-config keys."""


_MODEL_FLAGS = (
    "--kv-bits",
    "--kv-group-size",
    "--quantized-kv-start",
    "--adapter-path",
    "--chat-template",
    "--chat-template-args",
    "--prompt-cache-file",
    "--draft-model",
    "--num-draft-tokens",
    "--prompt-lookup",
)
"""Flags that set how a local model is loaded (refused with --server)."""


def _scalar(annotation: Any) -> type:
    """int or float inside ``Annotated[...]`` / ``X | None``."""
    if annotation in (int, float):
        return annotation
    for arg in get_args(annotation):
        if arg in (int, float):
            return arg
        found = _scalar(arg)
        if found is not type(None):
            return found
    return type(None)


def _container(annotation: object) -> type | None:
    """tuple or dict when the field holds one (possibly inside Annotated / Optional)."""
    origin = get_origin(annotation)
    if origin in (tuple, dict):
        return origin
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in get_args(annotation):
            found = _container(arg)
            if found is not None:
                return found
    return None


def _json_object(text: str) -> dict[str, object]:
    """A JSON object from the command line (mlx-lm's ``--chat-template-args``)."""
    from mlx_harmony.controller.template_kwargs import template_args_from_json

    try:
        return template_args_from_json(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _logit_bias_item(text: str) -> tuple[int, float]:
    token, sep, bias = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected TOKEN_ID=BIAS such as 1234=-100, got {text!r}"
        ) from None


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "sampling", "Sampling parameters (default: the prompt config's, else SamplingParams')."
    )
    for flag, name in SAMPLING_FLAGS.items():
        info = SamplingParams.model_fields[name]
        help_text = f"{info.description} (default {json.dumps(_jsonable(info.default))})"
        container = _container(info.annotation)
        if container is tuple:
            group.add_argument(
                flag, dest=name, type=int, nargs="+", metavar="TOKEN_ID", help=help_text
            )
        elif container is dict:
            group.add_argument(
                flag,
                dest=name,
                type=_logit_bias_item,
                nargs="+",
                metavar="TOKEN_ID=BIAS",
                help=help_text,
            )
        else:
            kind = _scalar(info.annotation)
            metavar = "N" if kind is int else "X"
            group.add_argument(flag, dest=name, type=kind, metavar=metavar, help=help_text)


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The model, prompt-config, sampling, generation, tool and debug flags."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        metavar="MODEL",
        help="An MLX model folder or a Hugging Face repo id (openai/gpt-oss-20b, "
        "mlx-community/gpt-oss-20b-MXFP4-Q8); a bare name is also looked up in the prompt "
        "config's models_dir. Default: the profile's, the resumed chat's, else the demo model.",
    )
    model.add_argument("--profile", metavar="NAME", help="A profile: a model and a prompt config.")
    model.add_argument(
        "--profiles-file",
        metavar="PATH",
        help="The profiles file (default: $MLX_HARMONY_PROFILES, ./profiles.json, else "
        "./configs/profiles.json); without --profile its default profile is used.",
    )
    model.add_argument(
        "--prompt-config",
        metavar="PATH",
        help="A prompt config JSON file (wins over the profile's).",
    )
    model.add_argument(
        "--server",
        metavar="URL",
        help="Chat with a running mlx-harmony server (e.g. http://127.0.0.1:8000) instead of "
        "loading a model here; --model then names one of the server's models.",
    )
    _add_sampling_options(parser)

    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-tokens", type=int, metavar="N", help="Most tokens one reply may use.")
    gen.add_argument(
        "--reasoning-effort",
        choices=("low", "medium", "high"),
        type=str.lower,
        help="gpt-oss reasoning effort.",
    )
    gen.add_argument(
        "--performance-mode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Use the prompt config's perf_* values (shorter, faster replies).",
    )
    gen.add_argument(
        "--loop-detection",
        choices=("off", "cheap", "full"),
        type=str.lower,
        help="Stop replies stuck repeating themselves (default: cheap).",
    )
    gen.add_argument(
        "--max-kv-size",
        type=int,
        metavar="N",
        help="Rotating KV cache size in tokens (default: grows as needed).",
    )
    gen.add_argument(
        "--mlock",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Keep the weights wired in memory (Metal).",
    )

    gen.add_argument(
        "--kv-bits",
        type=int,
        choices=(4, 8),
        help="Quantize the KV cache's full-attention layers to 4 or 8 bits (default: off).",
    )
    gen.add_argument(
        "--kv-group-size",
        type=int,
        choices=(32, 64, 128),
        help="Group size of the quantized KV cache (default 64).",
    )
    gen.add_argument(
        "--quantized-kv-start",
        type=int,
        metavar="N",
        help="Quantize the KV cache once it holds N tokens (default 0: from the start).",
    )
    gen.add_argument(
        "--adapter-path",
        metavar="DIR",
        help="An mlx-lm adapter folder (LoRA, DoRA or full fine-tune) to apply to the model.",
    )
    gen.add_argument(
        "--chat-template",
        metavar="FILE",
        help="A Jinja chat template file that replaces the model's own (not gpt-oss).",
    )
    gen.add_argument(
        "--chat-template-args",
        type=_json_object,
        metavar="JSON",
        help="Keyword arguments for the chat template, e.g. '{\"enable_thinking\": false}' "
        "(mlx-lm's flag); for gpt-oss only reasoning_effort, model_identity, knowledge_cutoff, "
        "conversation_start_date.",
    )
    gen.add_argument(
        "--prompt-cache-file",
        metavar="FILE",
        help="A prompt cache written by mlx-harmony-cache-prompt for this model: prompts that "
        "start with its tokens prefill only the rest.",
    )

    speculative = parser.add_argument_group(
        "speculative decoding",
        "Guess several tokens cheaply and let the model check them in one pass: greedy output "
        "is the model's own, sampled output keeps its distribution. Not with --json-schema or "
        "--grammar.",
    )
    speculative.add_argument(
        "--draft-model",
        metavar="PATH_OR_REPO",
        help="A small model (folder or Hugging Face repo id) with the same tokenizer that "
        "proposes the tokens (mlx-lm's --draft-model).",
    )
    speculative.add_argument(
        "--num-draft-tokens",
        type=int,
        metavar="N",
        help="Guesses verified per pass with --draft-model or --prompt-lookup (default 3).",
    )
    speculative.add_argument(
        "--prompt-lookup",
        type=int,
        metavar="N",
        help="Draft without a second model: propose what followed the last N tokens where "
        "they occurred earlier in the context (editing, quoting code). Not with --draft-model.",
    )

    tools = parser.add_argument_group(
        "tools", "Built-in gpt-oss tools (default: off, or what the resumed chat used)."
    )
    tools.add_argument(
        "--browser",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Let the model open web pages.",
    )
    tools.add_argument(
        "--python",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Let the model run Python in a sandbox (bubblewrap on Linux, sandbox-exec on macOS).",
    )
    tools.add_argument(
        "--python-unsandboxed",
        action="store_true",
        help="Where no sandbox is installed, run the python tool without one: model-written "
        "code then runs with your rights.",
    )
    tools.add_argument(
        "--apply-patch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Let the model edit files under the current folder.",
    )

    debug = parser.add_argument_group("debugging")
    debug.add_argument(
        "--debug",
        action="store_true",
        help="Print each raw prompt and response (stderr).",
    )
    debug.add_argument(
        "--debug-tokens",
        choices=("in", "out", "both"),
        help="Print the prompt's and/or the response's token ids (stderr).",
    )
    debug.add_argument(
        "--debug-file",
        metavar="DIR",
        help="Write every prompt, response and retry decision under DIR, one folder each.",
    )

    structured = parser.add_argument_group(
        "structured output", "Constrain every reply (the reasoning stays free; local models only)."
    )
    shape = structured.add_mutually_exclusive_group()
    shape.add_argument(
        "--json-schema",
        metavar="FILE",
        help="A JSON schema file: the answer is JSON that matches it.",
    )
    shape.add_argument(
        "--grammar",
        metavar="FILE",
        help="A Lark grammar file (llguidance's dialect) the whole reply must match.",
    )


def build_chat_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-harmony-chat",
        description="Chat with a gpt-oss (or other MLX) model in the terminal. With no model "
        "flag it uses the tiny demo model. Enter sends, Esc-Enter (Alt-Enter) adds a line, "
        "\\help lists the chat commands, Ctrl-C stops a reply, Ctrl-D quits.",
    )
    parser.add_argument("--version", action="version", version=_version_text())
    add_common_options(parser)
    chats = parser.add_argument_group("chat files (chat-log v2)")
    chats.add_argument(
        "--chat",
        metavar="PATH",
        help="Continue PATH if it exists (with its model, unless given) and save to it after "
        "every exchange.",
    )
    chats.add_argument(
        "--load-conversation", metavar="PATH", help="Start from a saved chat (\\save writes back)."
    )
    chats.add_argument(
        "--save-conversation", metavar="PATH", help="Save the chat to PATH after every exchange."
    )
    display = parser.add_argument_group("display")
    display.add_argument(
        "--no-markdown",
        dest="markdown",
        action="store_false",
        help="Print answers as plain text instead of rendered markdown.",
    )
    display.add_argument(
        "--hide-thinking", action="store_true", help="Do not show the model's reasoning."
    )
    return parser


def build_generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-harmony-generate",
        description="Answer one prompt and exit: the answer on stdout, or --json with the "
        "reasoning, the answer and the stats.",
    )
    parser.add_argument("--version", action="version", version=_version_text())
    parser.add_argument(
        "--prompt", metavar="TEXT", help="The prompt (default: read from stdin until EOF)."
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="Print one JSON object: final, analysis, finish_reason, truncated, stats.",
    )
    parser.add_argument(
        "--show-thinking", action="store_true", help="Stream the reasoning to stderr."
    )
    add_common_options(parser)
    return parser


def _version_text() -> str:
    from importlib.metadata import version

    return f"%(prog)s {version('mlx-harmony-cli')}"


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag, name in SAMPLING_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if isinstance(value, list) and name == "logit_bias":
            value = dict(value)
        elif isinstance(value, list):
            value = tuple(value)
        try:
            SamplingParams.model_validate({name: value})
        except ValidationError as error:
            parser.error(f"{flag}: {error.errors()[0]['msg'].removeprefix('Value error, ')}")
        setattr(args, name, value)
    for flag in ("--max-tokens", "--max-kv-size"):
        value = getattr(args, GENERATION_FLAGS[flag])
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    for flag in ("--num-draft-tokens", "--prompt-lookup"):
        value = getattr(args, GENERATION_FLAGS[flag])
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.draft_model is not None and args.prompt_lookup is not None:
        parser.error(
            "--draft-model and --prompt-lookup cannot be combined (each is a way to draft); "
            "give one of them"
        )
    if args.draft_model is not None and (args.json_schema or args.grammar):
        parser.error(
            "--json-schema and --grammar cannot be combined with --draft-model (a grammar "
            "cannot take back rejected guesses); drop one of them"
        )
    if args.prompt_lookup is not None and (args.json_schema or args.grammar):
        parser.error(
            "--json-schema and --grammar cannot be combined with --prompt-lookup (a grammar "
            "cannot take back rejected guesses); drop one of them"
        )
    if args.quantized_kv_start is not None and args.quantized_kv_start < 0:
        parser.error(f"--quantized-kv-start must be at least 0, got {args.quantized_kv_start}")
    if args.kv_bits is not None and args.max_kv_size is not None:
        parser.error("--kv-bits and --max-kv-size cannot be combined; give one of them")
    for flag in ("--chat-template", "--prompt-cache-file"):
        value = getattr(args, GENERATION_FLAGS[flag])
        if value is not None and not Path(value).is_file():
            parser.error(f"{flag}: {value} is not a file")
    if args.adapter_path is not None and not Path(args.adapter_path).is_dir():
        parser.error(f"--adapter-path: {args.adapter_path} is not a folder")
    if getattr(args, "chat", None) and (args.load_conversation or args.save_conversation):
        parser.error(
            "--chat loads and saves one file; use it alone, or --load-conversation and "
            "--save-conversation"
        )
    if args.server and any(
        getattr(args, name) for name in ("browser", "python", "apply_patch", "mlock")
    ):
        parser.error(
            "--browser, --python, --apply-patch and --mlock apply to a local model; "
            "the server decides its own tools and memory"
        )
    local = [flag for flag in _MODEL_FLAGS if getattr(args, GENERATION_FLAGS[flag]) is not None]
    if args.server and local:
        parser.error(
            f"{', '.join(local)} apply to a local model; start the server with them instead"
        )


def _constraint(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Read --json-schema / --grammar into ``args.constraint`` (a `ConstraintSpec` or None);
    a file that cannot be read or parsed is a usage error. The engine checks the schema or
    grammar itself once the model's tokenizer is loaded (`launch.make_backend`)."""
    schema_file, grammar_file = args.json_schema, args.grammar
    args.constraint = None
    if schema_file is None and grammar_file is None:
        return
    flag = "--json-schema" if schema_file is not None else "--grammar"
    if args.server:
        parser.error(f"{flag} applies to a local model; the server takes response_format")
    path = Path(schema_file if schema_file is not None else grammar_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        parser.error(f"{flag}: cannot read {path}: {error}")
    from mlx_harmony.generate.constrain import ConstraintError, ConstraintSpec

    try:
        if schema_file is not None:
            try:
                schema = json.loads(text)
            except json.JSONDecodeError as error:
                parser.error(f"--json-schema: {path} is not JSON: {error}")
            if not isinstance(schema, dict):
                parser.error(f"--json-schema: {path} must hold a JSON object (a schema)")
            args.constraint = ConstraintSpec("json_schema", schema=schema)
        else:
            args.constraint = ConstraintSpec("grammar", grammar=text)
    except ConstraintError as error:
        parser.error(f"{flag}: {error}")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check `argv` (usage errors exit with status 2, as argparse does)."""
    args = parser.parse_args(argv)
    _check(parser, args)
    _constraint(parser, args)
    return args


def command_line_from(args: argparse.Namespace) -> CommandLine:
    """The settings the flags ask for, for `merge_settings`."""
    values: dict[str, Any] = {name: getattr(args, name) for name in SAMPLING_FLAGS.values()}
    values.update({name: getattr(args, name) for name in GENERATION_FLAGS.values()})
    tools = {name: getattr(args, name) for name in TOOL_NAMES}
    return CommandLine(
        values={k: v for k, v in values.items() if v is not None},
        model=args.model,
        tools=tools,
        server=args.server,
    )
