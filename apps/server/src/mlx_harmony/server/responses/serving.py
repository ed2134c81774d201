"""`ResponsesService`: responses served on the model worker (the Responses side of
`Serving`), kept in the `ResponseStore` for ``previous_response_id`` and ``GET``."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

from ..extras import check_unknown_fields
from ..models import ModelRegistry
from ..reasoning_seal import ReasoningSeal
from ..worker import ModelWorker
from .events import ResponseOutput
from .protocol import InputItemModel, ResponseCreateRequest, ResponseDeleted, ResponseObject
from .store import ResponseStore, StoredResponse
from .translation import ResponsePlan, not_stored, plan_response

__all__ = ["ResponsesService"]


@dataclass
class ResponsesService:
    """Checks Responses requests, renders their turns and keeps the finished responses."""

    registry: ModelRegistry
    worker: ModelWorker
    store: ResponseStore
    _: KW_ONLY
    max_tokens_cap: int | None = None
    seal: ReasoningSeal = field(default_factory=ReasoningSeal)
    """Seals and opens reasoning items' ``encrypted_content``."""

    def plan(self, body: ResponseCreateRequest) -> ResponsePlan:
        check_unknown_fields(body)
        return plan_response(
            body, self.registry, self.store, max_tokens_cap=self.max_tokens_cap, seal=self.seal
        )

    def output(self, plan: ResponsePlan, *, stream: bool) -> ResponseOutput:
        return ResponseOutput(plan, stream=stream, keep=self._keep)

    def _keep(self, response: ResponseObject, items: tuple[InputItemModel, ...]) -> None:
        self.store.put(response.id, StoredResponse(response, items))

    def get(self, response_id: str) -> ResponseObject:
        stored = self.store.get(response_id)
        if stored is None:
            raise not_stored(response_id, self.store, param=None)
        return stored.response

    def delete(self, response_id: str) -> ResponseDeleted:
        if not self.store.delete(response_id):
            raise not_stored(response_id, self.store, param=None)
        return ResponseDeleted(id=response_id, deleted=True)
