"""The routes every API shares: the API key check, ``/v1`` routers, health and models.

Each API adds its own router (`chat.router`, `responses.router`) made by `v1_router`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from .errors import APIError
from .models import ModelRegistry
from .protocol import ErrorResponse, Health, ModelCard, ModelList
from .worker import LoadedState

__all__ = ["health_router", "models_router", "require_api_key", "streamed_post", "v1_router"]

RouteT = TypeVar("RouteT", bound=Callable[..., Any])

_ERRORS: dict[str, str] = {
    "400": "Malformed JSON, a value out of range, or a prompt longer than the context",
    "401": "Missing or wrong API key",
    "404": "Unknown model",
    "413": "Request body too large",
    "422": "The body does not match the schema (wrong types, unknown roles)",
    "503": "The model cannot be loaded, or the queue is full",
}


def require_api_key(request: Request) -> None:
    """``Authorization: Bearer <key>`` on every /v1 route when the server has a key."""
    key: str | None = request.app.state.settings.api_key
    if not key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        token.strip().encode(), key.encode()
    ):
        raise APIError(
            401,
            "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
            "key the server was started with (--api-key or MLX_HARMONY_API_KEY)",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def v1_router(errors: dict[str, str] | None = None, *, tags: list[str] | None = None) -> APIRouter:
    """A router under ``/v1`` behind the API key; `errors` replace the documented error
    descriptions by status."""
    described = {**_ERRORS, **(errors or {})}
    responses: dict[int | str, dict[str, Any]] = {
        int(status): {"model": ErrorResponse, "description": text}
        for status, text in described.items()
    }
    return APIRouter(
        prefix="/v1",
        dependencies=[Depends(require_api_key)],
        responses=responses,
        tags=list(tags or []),
    )


def streamed_post(
    router: APIRouter, path: str, answer: type[BaseModel]
) -> Callable[[RouteT], RouteT]:
    """A ``POST`` route of a turn: `answer` as JSON, or server-sent events with ``stream``."""
    return router.post(
        path, response_model=answer, responses={200: {"content": {"text/event-stream": {}}}}
    )


health_router = APIRouter(tags=["health"])
models_router = v1_router()


@health_router.get("/v1/health", response_model=Health)
@health_router.get("/health", response_model=Health, include_in_schema=False)
async def health(request: Request) -> Health:
    """Whether the model is loaded, and which; needs no API key."""
    worker = request.app.state.worker
    registry = request.app.state.registry
    state = worker.state
    entry = state.entry if state is not None else registry.default
    return Health(
        status="ok",
        model=entry.id,
        model_loaded=state is not None,
        model_path=_model_path(state),
        prompt_config_path=entry.prompt_config_path,
        loaded_at_unix=state.loaded_at if state is not None else None,
        queued_requests=worker.queued,
        running_requests=worker.running,
        waiting_requests=worker.waiting,
        max_concurrency=worker.max_concurrency,
        prompt_cache=_prompt_cache(state),
        load_error=worker.load_error,
    )


def _prompt_cache(state: LoadedState | None) -> dict[str, int] | None:
    cache = getattr(state.generator, "prompt_cache", None) if state is not None else None
    if cache is None or not hasattr(cache, "evictions"):
        return None
    return {
        "entries": len(cache),
        "bytes": cache.nbytes,
        "hits": cache.hits,
        "misses": cache.misses,
        "evictions": cache.evictions,
    }


def _model_path(state: LoadedState | None) -> str | None:
    if state is None:
        return None
    loaded = getattr(state.generator, "loaded", None)
    path = getattr(loaded, "path", None)
    return str(path) if path is not None else state.entry.model


@models_router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    """The default model, the model folders under models_dir, then the profiles."""
    return ModelList(object="list", data=_registry(request).cards())


@models_router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    for card in _registry(request).cards():
        if card.id == model_id:
            return card
    raise APIError(
        404, f"model {model_id!r} is not served here", param="model", code="model_not_found"
    )


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry
