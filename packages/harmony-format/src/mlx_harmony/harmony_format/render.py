"""Render conversations into prompt tokens, fully (openai-harmony) or incrementally (cached).

``render_prompt`` hands the whole conversation to openai-harmony on every call. A chat re-renders
the same history every turn, so ``PromptRenderer`` keeps each message's tokens and only renders
the new ones; its output is token-for-token what openai-harmony renders, including its rules:

* the system message mentions the ``functions`` namespace when a developer message declares
  function tools (so the system message's tokens depend on the developer message), and
* with ``auto_drop_analysis`` (the default), when the last assistant message is on the ``final``
  channel, ``analysis`` messages that come before the *first* ``final`` message are left out.
  openai-harmony 0.0.8 keeps analysis messages of later turns; we reproduce that as is.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import openai_harmony as oh

from .encoding import ASSISTANT, CALL, RETURN, START, get_encoding
from .messages import DeveloperConfig, Message, Role, SystemConfig

__all__ = [
    "PromptRenderer",
    "RenderStats",
    "render_completion",
    "render_message",
    "render_prompt",
    "render_prompt_text",
]


def _conversation(
    messages: Iterable[Message], system: SystemConfig | None, developer: DeveloperConfig | None
) -> list[Message]:
    """The messages with the system (default config unless one is given) and developer ones."""
    body = list(messages)
    for message in body:
        if not isinstance(message, Message):
            raise TypeError(
                f"render_prompt takes Message values, got {type(message).__name__}: {message!r}; "
                "build them with Message.user(...), Message.assistant(...)"
            )
    has_system = any(m.role is Role.SYSTEM for m in body)
    if has_system and system is not None:
        raise ValueError(
            "the messages already hold a system message and system= was given too; pass only one"
        )
    if developer is not None and any(m.role is Role.DEVELOPER for m in body):
        raise ValueError(
            "the messages already hold a developer message and developer= was given too; "
            "pass only one"
        )
    head = [] if has_system else [Message.system(system)]
    if body and body[0].role is Role.SYSTEM:
        head, body = [body[0]], body[1:]
    if developer is not None:
        head.append(Message.developer(developer))
    return head + body


def _has_function_tools(conversation: Sequence[Message]) -> bool:
    return any(
        isinstance(m.content, DeveloperConfig) and bool(m.content.tools) for m in conversation
    )


def _kept(conversation: Sequence[Message], auto_drop_analysis: bool) -> list[Message]:
    """openai-harmony's analysis dropping (``render_conversation_into``), exactly."""
    if not auto_drop_analysis:
        return list(conversation)
    last_assistant_is_final = next(
        (m.channel == "final" for m in reversed(conversation) if m.role is Role.ASSISTANT), False
    )
    if not last_assistant_is_final:
        return list(conversation)
    first_final = next(
        (i for i, m in enumerate(conversation) if m.channel == "final"), len(conversation)
    )
    return [m for i, m in enumerate(conversation) if i >= first_final or m.channel != "analysis"]


def render_prompt(
    messages: Iterable[Message],
    *,
    system: SystemConfig | None = None,
    developer: DeveloperConfig | None = None,
    auto_drop_analysis: bool = True,
) -> list[int]:
    """The prompt for the assistant's next turn; it ends with ``<|start|>assistant``.

    A system message is always rendered: from ``system``, or ``SystemConfig()`` when neither
    ``system`` nor the messages give one. The developer message comes from ``developer``.
    """
    conversation = _conversation(messages, system, developer)
    return get_encoding().render_conversation_for_completion(
        oh.Conversation.from_messages([m.to_harmony() for m in conversation]),
        Role.ASSISTANT,
        oh.RenderConversationConfig(auto_drop_analysis=auto_drop_analysis),
    )


def render_prompt_text(
    messages: Iterable[Message],
    *,
    system: SystemConfig | None = None,
    developer: DeveloperConfig | None = None,
    auto_drop_analysis: bool = True,
) -> str:
    """``render_prompt`` as text; encoding it with all special tokens allowed gives the same ids.

    That holds unless a message's own text contains a special-token literal such as
    ``<|end|>``: openai-harmony renders such text as ordinary tokens, the text form cannot tell.
    """
    tokens = render_prompt(
        messages, system=system, developer=developer, auto_drop_analysis=auto_drop_analysis
    )
    return get_encoding().decode_utf8(tokens)


def render_message(message: Message, *, conversation_has_function_tools: bool = False) -> list[int]:
    """One message's tokens, from ``<|start|>`` to its end token."""
    options = oh.RenderOptions(conversation_has_function_tools=conversation_has_function_tools)
    return get_encoding().render(message.to_harmony(), options)


def render_completion(messages: Sequence[Message], *, stop: bool = True) -> list[int]:
    """The tokens a model writes after a prompt's ``<|start|>assistant`` to say ``messages``.

    For scripted generators in tests: the first header has no ``<|start|>assistant`` (the
    prompt holds it), messages are separated by ``<|end|>``, and the last one ends with
    ``<|call|>`` for a tool call and ``<|return|>`` otherwise; ``stop=False`` leaves that last
    token out, as when generation hits its token limit.
    """
    out: list[int] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Message) or message.role is not Role.ASSISTANT:
            raise ValueError(f"a completion holds assistant messages only, got {message!r}")
        tokens = render_message(message)
        if tokens[-1] == CALL and i != len(messages) - 1:
            raise ValueError(
                f"message {i} is a tool call, which ends generation; put it last ({message!r})"
            )
        if i == 0:
            tokens = tokens[2:]  # the prompt ends with <|start|>assistant
        if i == len(messages) - 1:
            tokens = tokens[:-1] + ([tokens[-1] if tokens[-1] == CALL else RETURN] if stop else [])
        out.extend(tokens)
    return out


@dataclass(frozen=True, slots=True)
class RenderStats:
    """Messages rendered by openai-harmony vs taken from the cache, since the last clear."""

    rendered: int
    cached: int


class PromptRenderer:
    """``render_prompt`` with a per-message token cache, for chats that grow turn by turn.

    The cache is keyed by the frozen ``Message`` (and, for system messages, by whether the
    conversation declares function tools), holds up to ``max_messages`` entries (least recently
    used go first) and is safe to share between threads.
    """

    def __init__(self, *, max_messages: int = 4096) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        self._max = max_messages
        self._cache: OrderedDict[object, list[int]] = OrderedDict()
        self._lock = threading.Lock()
        self._rendered = 0
        self._cached = 0

    @property
    def stats(self) -> RenderStats:
        return RenderStats(rendered=self._rendered, cached=self._cached)

    def clear(self) -> None:
        """Forget every cached message and reset the counters."""
        with self._lock:
            self._cache.clear()
            self._rendered = self._cached = 0

    def render_prompt(
        self,
        messages: Iterable[Message],
        *,
        system: SystemConfig | None = None,
        developer: DeveloperConfig | None = None,
        auto_drop_analysis: bool = True,
    ) -> list[int]:
        """Same arguments and same tokens as the module's ``render_prompt``."""
        conversation = _conversation(messages, system, developer)
        has_tools = _has_function_tools(conversation)
        out: list[int] = []
        for message in _kept(conversation, auto_drop_analysis):
            key = (message, has_tools) if message.role is Role.SYSTEM else message
            with self._lock:
                tokens = self._cache.get(key)
                if tokens is not None:
                    self._cache.move_to_end(key)
                    self._cached += 1
            if tokens is None:
                tokens = render_message(message, conversation_has_function_tools=has_tools)
                with self._lock:
                    self._cache[key] = tokens
                    self._rendered += 1
                    if len(self._cache) > self._max:
                        self._cache.popitem(last=False)
            out.extend(tokens)
        out.append(START)
        out.append(ASSISTANT)
        return out
