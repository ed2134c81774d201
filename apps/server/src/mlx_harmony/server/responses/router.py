"""The Responses routes: ``POST /v1/responses`` (whole or streamed), ``GET`` and ``DELETE
/v1/responses/{id}`` (thin: checking lives in `translation`, rendering in `events`, running in
the shared `serving`)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from ..routes import v1_router
from ..serving import serve
from .protocol import ResponseCreateRequest, ResponseDeleted, ResponseObject
from .serving import ResponsesService

__all__ = ["responses_router"]

responses_router = v1_router(
    {
        "400": "Malformed JSON, a value out of range, an unsupported item, tool or content "
        "type, or a prompt longer than the context",
        "404": "Unknown model, or a response (previous_response_id) not in the store",
        "422": "The body does not match the schema (wrong types, missing fields)",
    },
    tags=["responses"],
)


@responses_router.post(
    "/responses",
    response_model=ResponseObject,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def create_response(body: ResponseCreateRequest, request: Request) -> Response:
    """An OpenAI response; ``stream: true`` sends the Responses events as the tokens come."""
    service: ResponsesService = request.app.state.responses
    return await serve(service, body, request)


@responses_router.get("/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, request: Request) -> Response:
    """A stored response (``store`` was not false, and it is among the last ones kept)."""
    service: ResponsesService = request.app.state.responses
    return Response(service.get(response_id).model_dump_json(), media_type="application/json")


@responses_router.delete("/responses/{response_id}", response_model=ResponseDeleted)
async def delete_response(response_id: str, request: Request) -> ResponseDeleted:
    """Forget a stored response; later ``previous_response_id`` uses of it get a 404."""
    service: ResponsesService = request.app.state.responses
    return service.delete(response_id)
