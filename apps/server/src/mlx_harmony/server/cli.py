"""``mlx-harmony-server``: serve a model (the demo model by default) over the OpenAI API."""

from __future__ import annotations

import argparse
import os
import sys

from .settings import DEFAULT_MAX_BODY_BYTES, ServerSettings

__all__ = ["build_parser", "main"]


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
        default=os.environ.get("MLX_HARMONY_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on /v1 routes (or MLX_HARMONY_API_KEY)",
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
        "--max-concurrency",
        type=_positive,
        default=8,
        help="requests that decode together in one batch (default 8; 1: one at a time)",
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
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlx_harmony.controller import ConfigError

    try:
        settings = ServerSettings(
            model=args.model,
            profile=args.profile,
            profiles=args.profiles,
            prompt_config=args.prompt_config,
            models_dir=args.models_dir,
            host=args.host,
            port=args.port,
            preload=args.preload,
            api_key=args.api_key,
            max_tokens_cap=args.max_tokens_cap,
            log_file=args.log_file,
            max_body_bytes=args.max_body_bytes,
            max_queue=args.max_queue,
            max_concurrency=args.max_concurrency,
            prompt_cache_size=args.prompt_cache_size,
            prompt_cache_bytes=args.prompt_cache_bytes,
            response_store_size=args.response_store_size,
        )
        from .app import create_app

        app = create_app(settings)
    except (ConfigError, ValueError) as error:
        print(f"mlx-harmony-server: {error}", file=sys.stderr)
        return 2
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
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=False,
    )
    return 0
