"""The legacy completions route: ``POST /v1/completions`` (thin: the work is in `serving`)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from ..routes import streamed_post, v1_router
from .protocol import Completion, CompletionRequest
from .serving import serve_completion

__all__ = ["completions_router"]

completions_router = v1_router(tags=["completions"])


@streamed_post(completions_router, "/completions", Completion)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """A text completion of a raw prompt (no chat template); ``stream: true`` streams it."""
    state = request.app.state
    settings = state.settings
    return await serve_completion(
        state.registry,
        state.worker,
        body,
        request,
        max_tokens_cap=settings.max_tokens_cap,
        keepalive_s=settings.keepalive_s,
    )
