"""`ChatService`: chat completions served on the model worker (the chat side of `Serving`)."""

from __future__ import annotations

import asyncio
from dataclasses import KW_ONLY, dataclass

from ..channel import EventChannel
from ..models import ModelRegistry
from ..worker import CountJob, ModelWorker, PromptCount
from .events import ChatOutput
from .protocol import ChatCompletionRequest, TokenCountResponse
from .translation import ChatPlan, plan_chat

__all__ = ["ChatService"]


@dataclass
class ChatService:
    """Checks chat requests against the registry's models and renders their turns."""

    registry: ModelRegistry
    worker: ModelWorker
    _: KW_ONLY
    max_tokens_cap: int | None = None

    def plan(self, body: ChatCompletionRequest) -> ChatPlan:
        entry = self.registry.resolve(body.model)
        return plan_chat(body, entry, max_tokens_cap=self.max_tokens_cap)

    def output(self, plan: ChatPlan, *, stream: bool) -> ChatOutput:
        return ChatOutput(plan, stream=stream)

    async def count_tokens(self, body: ChatCompletionRequest) -> TokenCountResponse:
        """The prompt size of `body`'s conversation, counted on the worker."""
        plan = self.plan(body)
        channel: EventChannel[PromptCount] = EventChannel(asyncio.get_running_loop())
        self.worker.submit(CountJob(plan.turn_plan, channel))
        items: list[PromptCount] = []
        while not channel.closed:
            items.extend(await channel.get_batch())
        prompt, window, margin = items[0]
        return TokenCountResponse(prompt_tokens=prompt, max_context_tokens=window, margin=margin)
