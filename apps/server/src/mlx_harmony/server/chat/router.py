"""The chat routes: ``POST /v1/chat/completions`` and ``POST /v1/tokenize`` (thin: checking
lives in `translation`, rendering in `events`, running in the shared `serving`)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from ..routes import v1_router
from ..serving import serve
from .protocol import ChatCompletion, ChatCompletionRequest, TokenCountResponse
from .serving import ChatService

__all__ = ["chat_router"]

chat_router = v1_router()


@chat_router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """An OpenAI chat completion; ``stream: true`` sends chunks as the tokens come."""
    service: ChatService = request.app.state.chat
    return await serve(service, body, request)


@chat_router.post("/tokenize", response_model=TokenCountResponse)
async def tokenize(body: ChatCompletionRequest, request: Request) -> TokenCountResponse:
    """How many prompt tokens a chat request's conversation uses, and the context budget."""
    service: ChatService = request.app.state.chat
    return await service.count_tokens(body)
