"""The HTTP routes: thin; checking and answering live in `service`."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import APIError
from .protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    TokenCountResponse,
)
from .service import ChatService, Outcome

__all__ = ["EventStreamResponse", "answer", "health_router", "require_api_key", "v1_router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed JSON, a value out of range, or a prompt longer than the context",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Request body too large",
        422: "The body does not match the schema (wrong types, unknown roles)",
        503: "The model cannot be loaded, or the queue is full",
    }.items()
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


health_router = APIRouter(tags=["health"])
v1_router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)


class EventStreamResponse(StreamingResponse):
    """Server-sent events. The service watches for the client leaving itself, so this only
    sends; a send to a closed connection ends the stream."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            pass
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


@health_router.get("/v1/health", response_model=Health)
@health_router.get("/health", response_model=Health, include_in_schema=False)
async def health(request: Request) -> dict[str, Any]:
    """Whether the model is loaded, and which; needs no API key."""
    worker = request.app.state.worker
    registry = request.app.state.registry
    state = worker.state
    entry = state.entry if state is not None else registry.default
    return {
        "status": "ok",
        "model": entry.id,
        "model_loaded": state is not None,
        "model_path": _model_path(state),
        "prompt_config_path": entry.prompt_config_path,
        "loaded_at_unix": state.loaded_at if state is not None else None,
        "queued_requests": worker.queued,
        "running_requests": worker.running,
        "waiting_requests": worker.waiting,
        "max_concurrency": worker.max_concurrency,
        "prompt_cache": _prompt_cache(state),
        "load_error": worker.load_error,
    }


def _prompt_cache(state: Any) -> dict[str, int] | None:
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


def _model_path(state: Any) -> str | None:
    if state is None:
        return None
    loaded = getattr(state.generator, "loaded", None)
    path = getattr(loaded, "path", None)
    return str(path) if path is not None else state.entry.model


@v1_router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    """The default model, the model folders under models_dir, then the profiles."""
    return {"object": "list", "data": request.app.state.registry.cards()}


@v1_router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    for card in request.app.state.registry.cards():
        if card["id"] == model_id:
            return card
    raise APIError(
        404, f"model {model_id!r} is not served here", param="model", code="model_not_found"
    )


@v1_router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """An OpenAI chat completion; ``stream: true`` sends chunks as the tokens come."""
    service: ChatService = request.app.state.chat
    outcome = Outcome()
    request.state.outcome = outcome
    return await answer(service, service.plan(body), request, outcome)


async def answer(service: Any, plan: Any, request: Request, outcome: Outcome) -> Response:
    """Run a planned turn with `service` (chat or responses): server-sent events when the plan
    streams, else the whole object; 499 when the client left before it started."""
    if plan.stream:
        events = await service.start_stream(plan, receive=request.receive, outcome=outcome)
        if events is None:
            return Response(status_code=499)
        return EventStreamResponse(
            events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    result = await service.complete(plan, receive=request.receive, outcome=outcome)
    if result is None:
        return Response(status_code=499)
    return JSONResponse(result)


@v1_router.post("/tokenize", response_model=TokenCountResponse)
async def tokenize(body: ChatCompletionRequest, request: Request) -> dict[str, Any]:
    """How many prompt tokens a chat request's conversation uses, and the context budget."""
    service: ChatService = request.app.state.chat
    return await service.count_tokens(body)
