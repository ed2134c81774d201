"""``mlx-harmony-server``: serve a model (the demo model by default) over the OpenAI API."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, TypedDict

from .settings import DEFAULT_MAX_BODY_BYTES, ServerSettings

if TYPE_CHECKING:
    import asyncio

    import mlx.core as mx

__all__ = ["UvicornOptions", "build_parser", "main", "uvicorn_options"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _json_object(text: str) -> dict[str, object]:
    """A JSON object from the command line (mlx-lm's ``--chat-template-args``)."""
    from mlx_harmony.controller.template_kwargs import template_args_from_json

    try:
        return template_args_from_json(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _hosts(text: str) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected host names separated by commas, or '*'")
    return names


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())
    if not origins:
        raise argparse.ArgumentTypeError(
            "expected origins separated by commas (https://app.example.com), or '*'"
        )
    return origins


def _api_keys(flags: list[str] | None) -> tuple[str, ...]:
    """The keys of --api-key, else of MLX_HARMONY_API_KEY (comma-separated)."""
    if flags:
        return tuple(flags)
    return tuple(
        k.strip() for k in os.environ.get("MLX_HARMONY_API_KEY", "").split(",") if k.strip()
    )


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS["GIB"] = 2**30


def _byte_size(text: str) -> int:
    """``4GB``, ``512MiB`` or plain bytes."""
    number = text.strip().upper().rstrip()
    unit = number.lstrip("0123456789.")
    digits = number[: len(number) - len(unit)]
    scale = _UNITS.get(unit.strip())
    try:
        value = float(digits)
    except ValueError:
        value = -1.0
    if scale is None or value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a size like 4GB, 512MB, 2GiB or a number of bytes, got {text!r}"
        )
    return int(value * scale)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-harmony-server",
        description="An OpenAI-compatible server for gpt-oss and other MLX models. Without "
        "--model or --profile it serves the small demo model (built on first use).",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--model", help="model folder, name under --models-dir, or Hugging Face repo id"
    )
    which.add_argument("--profile", help="profile name from --profiles")
    parser.add_argument(
        "--profiles",
        "--profiles-file",
        dest="profiles",
        default=os.environ.get("MLX_HARMONY_PROFILES"),
        help="profiles JSON file (or MLX_HARMONY_PROFILES); ours or mlx-harmony 0.4's flat one",
    )
    parser.add_argument("--prompt-config", help="prompt config JSON file")
    parser.add_argument(
        "--prompt-config-dir",
        metavar="DIR",
        help="folder of prompt configs a request's prompt_config may name (relative paths "
        "inside it); without it, only the configs the server was started with",
    )
    parser.add_argument(
        "--models-dir",
        help="folder of model folders clients may name (default: the prompt config's models_dir)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--preload",
        action="store_true",
        default=_env_flag("MLX_HARMONY_PRELOAD"),
        help="load the model before serving (or MLX_HARMONY_PRELOAD=1); default: on the first "
        "request",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="require 'Authorization: Bearer KEY' on every route but health (or "
        "MLX_HARMONY_API_KEY, comma-separated); repeat for several keys, each with its own "
        "queue share and stored responses",
    )
    parser.add_argument(
        "--allowed-hosts",
        type=_hosts,
        help="comma-separated Host names the server answers ('*': any); default: the loopback "
        "names when bound to loopback, else any",
    )
    parser.add_argument(
        "--max-tokens-cap", type=_positive, help="most tokens one reply may generate"
    )
    parser.add_argument("--log-file", help="append the request log here (default: stderr)")
    parser.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body (default {DEFAULT_MAX_BODY_BYTES})",
    )
    parser.add_argument(
        "--max-queue",
        type=_positive,
        default=64,
        help="requests that may wait beyond the running ones; more get a 503 (default 64)",
    )
    parser.add_argument(
        "--max-queue-per-client",
        type=_positive,
        default=None,
        help="requests one client (API key, else address) may have waiting, below --max-queue "
        "so a burst leaves room for others (default: half of --max-queue)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive,
        default=1000,
        help="open connections at most; beyond it the longest-idle one is closed, or the "
        "newcomer gets a 503 (default 1000)",
    )
    parser.add_argument(
        "--header-timeout",
        type=_seconds,
        default=10.0,
        help="seconds a client has to send a request's headers (default 10)",
    )
    parser.add_argument(
        "--body-timeout",
        type=_seconds,
        default=30.0,
        help="seconds a request body may go without sending a byte (default 30)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=_positive,
        default=8,
        help="requests that decode together in one batch (default 8; 1: one at a time)",
    )
    parser.add_argument(
        "--prompt-concurrency",
        type=_positive,
        default=None,
        help="newcomers whose prompts are prefilled together in one forward pass (default 8; "
        "1: each alone, as a lone request; needs --max-concurrency 2 or more)",
    )
    parser.add_argument(
        "--prompt-cache-size",
        type=_count,
        default=16,
        help="prompt-prefix caches kept across requests and conversations (default 16; 0: off)",
    )
    parser.add_argument(
        "--prompt-cache-bytes",
        type=_byte_size,
        default=None,
        help="the most memory those caches may hold, e.g. 4GB or 512MB (default: no limit "
        "beyond --prompt-cache-size)",
    )
    parser.add_argument(
        "--response-store-size",
        type=_positive,
        default=256,
        help="responses kept in memory for previous_response_id (default 256)",
    )
    parser.add_argument(
        "--reasoning-key-file",
        default=None,
        help="a Fernet key file that seals reasoning for include: reasoning.encrypted_content "
        "(default: $MLX_HARMONY_REASONING_KEY, else a key made at start)",
    )
    parser.add_argument(
        "--allowed-origins",
        type=_origins,
        default=(),
        help="browser origins allowed by CORS, separated by commas, or '*' (default: none, "
        "CORS off)",
    )
    parser.add_argument(
        "--max-n",
        type=_positive,
        default=8,
        help="the most choices one chat request may ask for with n (default 8)",
    )
    sharding = parser.add_argument_group(
        "sharded serving", "under mlx.launch with several ranks (see docs/distributed.md)"
    )
    sharding.add_argument(
        "--pipeline",
        action="store_true",
        help="shard the model pipeline parallel (a run of layers per rank) instead of tensor "
        "parallel; gpt-oss has no pipeline in mlx-lm",
    )
    sharding.add_argument(
        "--step-timeout",
        type=_seconds,
        default=None,
        help="seconds one engine step may take before a rank counts as hung and the server "
        "exits (default 60: above your longest prefill chunk)",
    )
    _add_model_options(parser)
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """How the default model loads (the same keys in its prompt config; the flags win)."""
    model = parser.add_argument_group("model set-up (the default model)")
    model.add_argument(
        "--kv-bits",
        type=int,
        choices=(4, 8),
        help="quantize the KV cache's full-attention layers to 4 or 8 bits; the model then "
        "serves one request at a time (the batch engine has no quantized cache)",
    )
    model.add_argument(
        "--kv-group-size",
        type=int,
        choices=(32, 64, 128),
        help="group size of the quantized KV cache (default 64)",
    )
    model.add_argument(
        "--quantized-kv-start",
        type=_count,
        metavar="N",
        help="quantize the KV cache once it holds N tokens (default 0: from the start)",
    )
    model.add_argument("--adapter-path", metavar="DIR", help="an mlx-lm adapter folder to apply")
    model.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template file replacing the model's own (not gpt-oss)",
    )
    model.add_argument(
        "--chat-template-args",
        type=_json_object,
        metavar="JSON",
        help="default keyword arguments for the chat template, e.g. "
        "'{\"enable_thinking\": false}' (a request's chat_template_kwargs update them); for "
        "gpt-oss only reasoning_effort, model_identity, knowledge_cutoff, "
        "conversation_start_date",
    )
    model.add_argument(
        "--prompt-cache-file",
        metavar="FILE",
        help="a prompt cache written by mlx-harmony-cache-prompt for this model: requests whose "
        "prompt starts with its tokens prefill only the rest",
    )
    model.add_argument(
        "--draft-model",
        metavar="PATH_OR_REPO",
        help="speculative decoding: a small model (folder or Hugging Face repo id) with the same "
        "tokenizer proposes tokens the model checks in one pass (greedy output unchanged); the "
        "model then serves one request at a time (the batch engine does not speculate), and "
        "requests with structured output (response_format json_schema, tool_choice required, "
        "strict tools) get a 400",
    )
    model.add_argument(
        "--num-draft-tokens",
        type=_positive,
        metavar="N",
        help="guesses verified per pass with --draft-model or --prompt-lookup (default 3)",
    )
    model.add_argument(
        "--prompt-lookup",
        type=_positive,
        metavar="N",
        help="speculative decoding without a draft model: propose what followed the last N "
        "tokens earlier in the context (editing, quoting code); one request at a time and no "
        "structured output, as with --draft-model",
    )
    model.add_argument(
        "--prompt-cache-dir",
        metavar="DIR",
        help="load the shared prompt caches from DIR at start and save them there at shutdown "
        "(a subfolder per model; needs --max-concurrency 2 or more)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlx_harmony.controller import ConfigError

    keys = _api_keys(args.api_keys)
    try:
        settings = ServerSettings(
            model=args.model,
            profile=args.profile,
            profiles=args.profiles,
            prompt_config=args.prompt_config,
            prompt_config_dir=args.prompt_config_dir,
            models_dir=args.models_dir,
            host=args.host,
            port=args.port,
            preload=args.preload,
            api_key=keys[0] if keys else None,
            api_keys=keys[1:],
            allowed_hosts=args.allowed_hosts,
            max_queue_per_client=args.max_queue_per_client,
            max_connections=args.max_connections,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            max_tokens_cap=args.max_tokens_cap,
            log_file=args.log_file,
            max_body_bytes=args.max_body_bytes,
            max_queue=args.max_queue,
            max_concurrency=args.max_concurrency,
            prompt_concurrency=args.prompt_concurrency,
            prompt_cache_size=args.prompt_cache_size,
            prompt_cache_bytes=args.prompt_cache_bytes,
            response_store_size=args.response_store_size,
            reasoning_key_file=args.reasoning_key_file,
            allowed_origins=args.allowed_origins,
            max_n=args.max_n,
            kv_bits=args.kv_bits,
            kv_group_size=args.kv_group_size,
            quantized_kv_start=args.quantized_kv_start,
            adapter_path=args.adapter_path,
            chat_template=args.chat_template,
            chat_template_args=args.chat_template_args,
            prompt_cache_file=args.prompt_cache_file,
            prompt_cache_dir=args.prompt_cache_dir,
            draft_model=args.draft_model,
            num_draft_tokens=args.num_draft_tokens,
            prompt_lookup=args.prompt_lookup,
        )
        group = _sharding_group(args)
        if group is not None:
            _refuse_sharded_speculation(settings)
    except (ConfigError, ValueError) as error:
        return _usage_error(error)
    if group is not None:
        from .sharding import serve_sharded

        return serve_sharded(
            settings,
            group,
            pipeline=args.pipeline,
            step_timeout_s=args.step_timeout or 60.0,
            log_level=args.log_level,
        )
    from .app import create_app

    try:
        app = create_app(settings)
    except (ConfigError, ValueError) as error:
        return _usage_error(error)
    import uvicorn

    if settings.serves_demo:
        from .models import DEMO_MODEL_ID, demo_model_folder

        print(
            f"mlx-harmony-server: no --model or --profile given: serving the demo model "
            f"({DEMO_MODEL_ID}); pass --model PATH_OR_REPO for a real one.",
            file=sys.stderr,
        )
        try:
            folder = demo_model_folder()  # built here, once, so no request waits for it
        except Exception as error:
            print(f"mlx-harmony-server: cannot build the demo model: {error}", file=sys.stderr)
            return 1
        print(f"mlx-harmony-server: demo model in {folder}", file=sys.stderr)
    where = f"http://{settings.host}:{settings.port}/v1"
    print(f"mlx-harmony-server: OpenAI API at {where}", file=sys.stderr)
    uvicorn.run(app, **uvicorn_options(settings, log_level=args.log_level))
    return 0


def _usage_error(error: Exception) -> int:
    print(f"mlx-harmony-server: {error}", file=sys.stderr)
    return 2


def _refuse_sharded_speculation(settings: ServerSettings) -> None:
    """A sharded model runs only the batch engine, which does not speculate."""
    config = settings.registry().default.prompt_config
    if config.draft_model is not None or config.prompt_lookup is not None:
        raise ValueError(
            "draft_model / prompt_lookup (--draft-model, --prompt-lookup or the prompt config): "
            "a sharded model runs only the batch engine, which does not speculate; drop them"
        )


def _sharding_group(args: argparse.Namespace) -> mx.distributed.Group | None:
    """The group of ranks when a launcher (mlx.launch, mpirun) started several; None when
    this process runs alone (then the sharding flags are refused)."""
    launched = any(name in os.environ for name in ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))
    if not (launched or args.pipeline or args.step_timeout):
        return None
    from .sharding import check_flags, launched_group

    group = launched_group()
    problem = check_flags(args, group)
    if problem is not None:
        raise ValueError(problem)
    return group


class UvicornOptions(TypedDict):
    """The keyword arguments `uvicorn_options` gives ``uvicorn.run`` / ``uvicorn.Config``."""

    host: str
    port: int
    log_level: str
    access_log: bool
    http: type[asyncio.Protocol]
    timeout_keep_alive: int
    backlog: int


def uvicorn_options(settings: ServerSettings, *, log_level: str = "info") -> UvicornOptions:
    """``uvicorn.run``'s arguments for `settings`: the address, and an h11 protocol with header
    and body read timeouts and a connection cap (within the open-files limit, raised to the
    hard limit here)."""
    from .limits import ConnectionLimits, limited_h11, raise_open_files_limit

    files = raise_open_files_limit()
    connections = settings.max_connections
    if files > 0 and connections > files - 64:
        connections = max(1, files - 64)
        print(
            f"mlx-harmony-server: --max-connections {settings.max_connections} is over the "
            f"open-files limit ({files}); using {connections}",
            file=sys.stderr,
        )
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=connections,
    )
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "access_log": False,
        "http": limited_h11(limits),
        "timeout_keep_alive": 5,
        "backlog": 4096,
    }
