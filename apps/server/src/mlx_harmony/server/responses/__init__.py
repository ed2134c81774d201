"""``/v1/responses``: protocol, translation to turns, events, service, store, router."""

from .router import responses_router
from .serving import ResponsesService
from .store import ResponseStore, StoredResponse
from .translation import ResponsePlan, plan_response, to_conversation

__all__ = [
    "ResponsePlan",
    "ResponseStore",
    "ResponsesService",
    "StoredResponse",
    "plan_response",
    "responses_router",
    "to_conversation",
]
