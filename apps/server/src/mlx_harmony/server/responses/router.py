"""The Responses routes: ``POST /v1/responses`` (whole or streamed), ``GET`` and ``DELETE
/v1/responses/{id}`` (thin: checking lives in `translation`, rendering in `events`, running in
the shared `serving`)."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import Response

from ..routes import streamed_post, v1_router
from ..serving import Outcome, answer
from .protocol import ResponseCreateRequest, ResponseDeleted, ResponseObject
from .serving import ResponsesService

__all__ = ["WARNING_HEADER", "responses_router"]

responses_router = v1_router(
    {
        "400": "Malformed JSON, a value out of range, an unsupported item, tool or content "
        "type, or a prompt longer than the context",
        "404": "Unknown model, or a response (previous_response_id) not in the store",
        "422": "The body does not match the schema (wrong types, missing fields)",
    },
    tags=["responses"],
)


WARNING_HEADER = "X-MLX-Harmony-Warning"
"""One header per warning: what the server left out of a response (a hosted tool it does not
run, reasoning it could not unseal, an ``include`` value it does not produce)."""

logger = logging.getLogger("mlx_harmony.server")


@streamed_post(responses_router, "/responses", ResponseObject)
async def create_response(body: ResponseCreateRequest, request: Request) -> Response:
    """An OpenAI response; ``stream: true`` sends the Responses events as the tokens come.
    What the server left out is said in ``X-MLX-Harmony-Warning`` headers (and the log)."""
    service = _responses(request)
    outcome = Outcome()
    request.state.outcome = outcome
    plan = service.plan(body)
    for warning in plan.warnings:
        logger.warning("%s: %s", plan.id, warning)
    response = await answer(service, plan, request, outcome)
    for warning in plan.warnings:
        response.headers.append(WARNING_HEADER, _header_text(warning))
    return response


def _header_text(text: str) -> str:
    """`text` as a header value: ASCII, one line."""
    return " ".join(text.encode("ascii", "replace").decode().split())


@responses_router.get("/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, request: Request) -> Response:
    """A stored response (``store`` was not false, and it is among the last ones kept)."""
    answer = _responses(request).get(response_id)
    return Response(answer.model_dump_json(), media_type="application/json")


@responses_router.delete("/responses/{response_id}", response_model=ResponseDeleted)
async def delete_response(response_id: str, request: Request) -> ResponseDeleted:
    """Forget a stored response; later ``previous_response_id`` uses of it get a 404."""
    return _responses(request).delete(response_id)


def _responses(request: Request) -> ResponsesService:
    service: ResponsesService = request.app.state.responses
    return service
