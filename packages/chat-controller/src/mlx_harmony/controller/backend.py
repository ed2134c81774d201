"""The backend interface of the front-end loop: a local model, or an HTTP server.

`ChatBackend` is what the front end needs: stream one turn's events for a `ChatRequest`,
count the context a conversation uses, and forget per-conversation state. `LocalBackend`
implements it with one `TokenGenerator` (so one prompt cache) per conversation; an HTTP client
implements it by mapping the server's stream onto the same events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from mlx_harmony.harmony_format import FunctionTool
from mlx_harmony.tools import ToolDeclarations, ToolRegistry

from .adapters import ChatAdapter, adapter_for
from .config import PromptConfig
from .context import ContextBudget
from .debug import DebugOptions, DebugWriter
from .events import TurnDone, TurnEvent
from .retries import DEFAULT_RETRY_POLICY, RetryPolicy
from .turn import DEFAULT_MAX_TOOL_ROUNDS, TokenStreamer, stream_chat_turn
from .turns import Turn

__all__ = ["ChatBackend", "ChatRequest", "LocalBackend", "TokenCount", "context_length_of"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One turn to answer: the new turn (usually just the user's message), the turns before
    it, the prompt config, the caller's function tools and an optional cancel flag."""

    turn: Turn
    history: tuple[Turn, ...] = ()
    config: PromptConfig = field(default_factory=PromptConfig)
    function_tools: tuple[FunctionTool, ...] = ()
    cancel: threading.Event | Callable[[], bool] | None = None


@dataclass(frozen=True, slots=True)
class TokenCount:
    """How much of the context window a conversation's prompt uses."""

    prompt_tokens: int
    max_context_tokens: int | None
    margin: int = 0

    @property
    def limit(self) -> int | None:
        """The most the prompt may use before old turns are left out."""
        return None if self.max_context_tokens is None else self.max_context_tokens - self.margin

    def describe(self) -> str:
        if self.max_context_tokens is None:
            return f"Context: {self.prompt_tokens} tokens (no limit set)."
        share = 100 * self.prompt_tokens / self.max_context_tokens
        return (
            f"Context: {self.prompt_tokens} of {self.max_context_tokens} tokens ({share:.0f}%); "
            f"older turns are left out past {self.limit} (margin {self.margin})."
        )


@runtime_checkable
class ChatBackend(Protocol):
    """What runs turns for a front end."""

    def stream_turn(self, request: ChatRequest) -> Iterator[TurnEvent]:
        """The turn's events; the last one is `TurnDone`. `ContextOverflowError` when even
        the new turn does not fit."""
        ...

    def count_tokens(
        self,
        turns: Sequence[Turn],
        *,
        config: PromptConfig,
        function_tools: Sequence[FunctionTool] = (),
    ) -> TokenCount: ...

    def reset(self) -> None:
        """Forget per-conversation state, such as the tools' (called on ``\\clear`` and
        ``\\load``)."""
        ...


def context_length_of(generator: object) -> int | None:
    """The model's context window from its config (``max_position_embeddings``), if known."""
    explicit = getattr(generator, "context_length", None)
    if isinstance(explicit, int):
        return explicit
    config = getattr(getattr(generator, "loaded", None), "config", None)
    value = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return value if isinstance(value, int) and value > 0 else None


class LocalBackend:
    """A model in this process: one generator (one prompt cache) for one conversation.

    ``generator`` is an mlx-generate `TokenGenerator` (or a test double); the adapter is
    chosen from it unless given. ``tools`` are the built-in tools that run here; function
    tools come with each request and are returned to the caller.
    """

    def __init__(
        self,
        generator: TokenStreamer,
        *,
        adapter: ChatAdapter | None = None,
        tools: ToolRegistry | None = None,
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        context_length: int | None = None,
        debug: DebugOptions | None = None,
    ) -> None:
        self.generator = generator
        self.adapter = adapter if adapter is not None else adapter_for(generator)
        self.tools = tools
        self.policy = policy
        self.max_tool_rounds = max_tool_rounds
        self.context_length = (
            context_length if context_length is not None else context_length_of(generator)
        )
        self.debug = DebugWriter(debug) if debug is not None and debug.enabled else None
        self.turns_run = 0

    def stream_turn(self, request: ChatRequest) -> Iterator[TurnEvent]:
        self._retune(request.config)
        for event in stream_chat_turn(
            self.generator,
            self.adapter,
            request.turn,
            history=request.history,
            config=request.config,
            tools=self.tools,
            function_tools=request.function_tools,
            policy=self.policy,
            max_tool_rounds=self.max_tool_rounds,
            context_length=self.context_length,
            cancel=request.cancel,
            debug=self.debug,
        ):
            if isinstance(event, TurnDone):
                self.turns_run += 1
            yield event

    def _retune(self, config: PromptConfig) -> None:
        """A real generator takes the config's per-call options (a ``\\set`` of
        ``clear_cache`` or ``reseed_each_turn`` applies from the next turn); ``mlock``,
        ``max_kv_size`` and the other load-time options (`GeneratorOptions.LOAD_TIME`) stay as
        the model was loaded with."""
        retune = getattr(self.generator, "retune", None)
        loaded = getattr(self.generator, "options", None)
        if not callable(retune) or loaded is None:
            return  # a test double
        options = config.generator_options()
        fixed = {"mlock": loaded.mlock, "max_kv_size": loaded.max_kv_size}
        fixed.update({name: getattr(loaded, name) for name in getattr(loaded, "LOAD_TIME", ())})
        retune(replace(options, **fixed))

    def count_tokens(
        self,
        turns: Sequence[Turn],
        *,
        config: PromptConfig,
        function_tools: Sequence[FunctionTool] = (),
    ) -> TokenCount:
        cfg = config.effective()
        use_tools = self.tools is not None and bool(self.tools) and self.adapter.supports_tools
        declarations = (
            self.tools.declarations()
            if use_tools and self.tools is not None
            else ToolDeclarations()
        )
        tokens = self.adapter.render(
            list(turns), config=cfg, tools=declarations, function_tools=function_tools
        )
        budget = ContextBudget.from_config(cfg, context_length=self.context_length)
        return TokenCount(len(tokens), budget.window, budget.margin)

    def reset(self) -> None:
        """Forget the tools' per-conversation state (the browser's pages). The prompt cache
        stays: the next prompt shares the system and developer prefix, which it reuses."""
        if self.tools is not None:
            self.tools.reset()
