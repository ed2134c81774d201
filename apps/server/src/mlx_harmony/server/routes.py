"""The routes every API shares: the body's text check, ``/v1`` routers, health and models.

The API key is checked for every route but health by `middleware.ApiKeyMiddleware`.

Each API adds its own router (`chat.router`, `responses.router`) made by `v1_router`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from .errors import APIError
from .models import ModelRegistry
from .protocol import ErrorResponse, Health, ModelCard, ModelList
from .worker import LoadedState

__all__ = [
    "find_invalid_text",
    "health_router",
    "models_router",
    "reject_invalid_text",
    "streamed_post",
    "v1_router",
]

RouteT = TypeVar("RouteT", bound=Callable[..., Any])

_ERRORS: dict[str, str] = {
    "400": "Malformed JSON, a value out of range, or a prompt longer than the context",
    "401": "Missing or wrong API key",
    "404": "Unknown model",
    "413": "Request body too large",
    "422": "The body does not match the schema (wrong types, unknown roles)",
    "503": "The model cannot be loaded, or the queue is full",
}


def find_invalid_text(value: Any, path: str = "") -> str | None:
    """The path (``messages[0].content``) of the first string in decoded JSON that is not valid
    Unicode (a lone surrogate such as ``"\\ud800"``), keys included; None when all are valid."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return where or "body"
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                name = f"{where}.{key}" if where else str(key)
                if not _encodable(key):
                    return where or "body"
                stack.append((name, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def reject_invalid_text(request: Request) -> None:
    """400 naming the field when a JSON body holds text that is not valid Unicode, before any
    model or tokenizer sees it (they need real UTF-8)."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    try:
        body = await request.json()  # cached: the route reads the same parse
    except ValueError:
        return  # malformed JSON: the route's own error says so
    field = find_invalid_text(body)
    if field is not None:
        raise APIError(
            400,
            f"{field} is not valid Unicode (it holds a lone surrogate such as \\ud800); send "
            "text that encodes as UTF-8",
            param=field,
            code="invalid_unicode",
        )


def v1_router(errors: dict[str, str] | None = None, *, tags: list[str] | None = None) -> APIRouter:
    """A router under ``/v1`` whose bodies must be valid Unicode; `errors` replace the
    documented error descriptions by status."""
    described = {**_ERRORS, **(errors or {})}
    responses: dict[int | str, dict[str, Any]] = {
        int(status): {"model": ErrorResponse, "description": text}
        for status, text in described.items()
    }
    return APIRouter(
        prefix="/v1",
        dependencies=[Depends(reject_invalid_text)],
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
