"""The chat routes: ``POST /v1/chat/completions`` and ``POST /v1/tokenize`` (thin: checking
lives in `translation`, rendering in `events`, running in the shared `serving`)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from ..routes import streamed_post, v1_router
from ..serving import Outcome, answer
from .protocol import ChatCompletion, ChatCompletionRequest, TokenCountResponse
from .serving import ChatService, answer_choices

__all__ = ["chat_router"]

chat_router = v1_router()


@streamed_post(chat_router, "/chat/completions", ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """An OpenAI chat completion; ``stream: true`` sends chunks as the tokens come."""
    service = _chat(request)
    outcome = Outcome()
    request.state.outcome = outcome
    plan = service.plan(body)
    if plan.n > 1:
        return await answer_choices(service, plan, request, outcome)
    return await answer(service, plan, request, outcome)


@chat_router.post("/tokenize", response_model=TokenCountResponse)
async def tokenize(body: ChatCompletionRequest, request: Request) -> TokenCountResponse:
    """How many prompt tokens a chat request's conversation uses, and the context budget."""
    return await _chat(request).count_tokens(body)


def _chat(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service
