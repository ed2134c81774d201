"""``POST /v1/chat/completions``: protocol, translation to turns, events, service, router."""

from .router import chat_router
from .serving import ChatService
from .translation import ChatPlan, plan_chat

__all__ = ["ChatPlan", "ChatService", "chat_router", "plan_chat"]
