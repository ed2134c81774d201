"""`create_app(settings)`: the FastAPI application, its services on ``app.state``."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from mlx_harmony.generate.constrain import prepare_tokenizer_in_background

from .chat import ChatService, chat_router
from .completions import completions_router
from .errors import install_error_handlers
from .extras import OriginalFieldsService, PromptConfigs
from .metrics import MetricsMiddleware, ServerMetrics, metrics_router
from .middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    HostCheckMiddleware,
    RequestLogMiddleware,
    make_request_logger,
)
from .models import ModelEntry, ModelRegistry, load_generator
from .reasoning_seal import load_reasoning_seal
from .responses import ResponsesService, ResponseStore, responses_router
from .routes import health_router, models_router
from .settings import ServerSettings
from .version import __version__
from .worker import ModelLoader, ModelWorker

if TYPE_CHECKING:
    from mlx_harmony.generate import BatchTokenGenerator, TokenGenerator

__all__ = ["create_app"]

logger = logging.getLogger("mlx_harmony.server")


def _load_and_prepare(entry: ModelEntry, **kwargs: Any) -> TokenGenerator | BatchTokenGenerator:
    """`load_generator`, then the tokenizer's structured-output view starts building on a
    background thread: the first constrained request waits only for what is left of it, not
    for the whole build (seconds for gpt-oss's 200k vocabulary). A speculating model refuses
    constrained requests, so it builds none."""
    generator = load_generator(entry, **kwargs)
    if not getattr(generator, "speculates", False):
        prepare_tokenizer_in_background(generator.tokenizer, harmony=generator.is_harmony)
    return generator


def create_app(
    settings: ServerSettings | None = None,
    *,
    loader: ModelLoader | None = None,
    registry: ModelRegistry | None = None,
) -> FastAPI:
    """The server for `settings`.

    ``loader`` builds a generator for a `ModelEntry` (default: mlx-generate's
    `TokenGenerator`; tests pass a scripted one). The prompt config, profiles and model
    names are checked here (`ConfigError`); the model itself loads in the lifespan with
    ``preload``, else on the first request, on the worker thread that will run it.
    """

    settings = settings if settings is not None else ServerSettings()
    registry = registry if registry is not None else settings.registry()
    seal = load_reasoning_seal(settings.reasoning_key_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = ModelWorker(
            loader
            or functools.partial(
                _load_and_prepare,
                max_concurrency=settings.max_concurrency,
                prompt_concurrency=settings.prompt_concurrency,
                prompt_cache_size=settings.prompt_cache_size,
                prompt_cache_bytes=settings.prompt_cache_bytes,
                prompt_cache_dir=settings.prompt_cache_dir,
            ),
            max_queue=settings.max_queue,
            max_concurrency=settings.max_concurrency,
            max_queue_per_client=settings.max_queue_per_client,
        )
        worker.start()
        app.state.settings = settings
        app.state.registry = registry
        app.state.worker = worker
        configs = PromptConfigs.of_registry(
            registry, folder=settings.prompt_config_dir, given=settings.prompt_config
        )
        app.state.chat = ChatService(
            registry,
            worker,
            max_tokens_cap=settings.max_tokens_cap,
            max_n=settings.max_n,
            original_fields=OriginalFieldsService(registry, configs),
        )
        app.state.responses = ResponsesService(
            registry,
            worker,
            ResponseStore(settings.response_store_size),
            max_tokens_cap=settings.max_tokens_cap,
            seal=seal,
        )
        try:
            if settings.preload:
                await asyncio.to_thread(worker.load, registry.default)
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(
        title="mlx-harmony-server",
        version=__version__,
        summary="An OpenAI-compatible server for gpt-oss and other MLX models.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(models_router)
    app.include_router(chat_router)
    app.include_router(responses_router)
    app.include_router(completions_router)
    app.include_router(metrics_router)
    app.state.metrics = metrics = ServerMetrics(
        queued=lambda: app.state.worker.waiting if hasattr(app.state, "worker") else 0,
        # submitted and not finished, less those waiting: also a turn run on the worker's
        # own thread (no batching), which `ModelWorker.running` does not count
        running=lambda: (
            app.state.worker.queued - app.state.worker.waiting
            if hasattr(app.state, "worker")
            else 0
        ),
    )
    # the last added runs first: log, then Host, then API key, then the body limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.keys:
        app.add_middleware(ApiKeyMiddleware, api_keys=settings.keys)
    hosts = settings.hosts
    if hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=hosts)
    app.add_middleware(
        RequestLogMiddleware, logger=make_request_logger(settings.log_file), api_keys=settings.keys
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.allowed_origins:
        # outermost: a browser's preflight carries no API key, and errors need CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )
    return app
