"""Chat-template keyword arguments (mlx-lm's ``--chat-template-args`` and the OpenAI-compatible
request field ``chat_template_kwargs``) for both kinds of model.

A model with a chat template gets them as they are: `NativeAdapter` passes
``PromptConfig.chat_template_args`` to ``apply_chat_template(..., **kwargs)``, as mlx-lm does.
gpt-oss has no template to pass them to (Harmony renders its prompt), so the keys that name
Harmony settings become those prompt-config fields (`HARMONY_TEMPLATE_KEYS`, the names
OpenAI's gpt-oss chat template reads) and every other key is refused: a key that changed
nothing would be silent acceptance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .config import PromptConfig

__all__ = [
    "HARMONY_TEMPLATE_KEYS",
    "TemplateKwargsError",
    "template_args_from_json",
    "with_request_template_kwargs",
    "with_template_kwargs",
]

HARMONY_TEMPLATE_KEYS: Mapping[str, str] = {
    "reasoning_effort": "reasoning_effort",
    "model_identity": "system_model_identity",
    "knowledge_cutoff": "knowledge_cutoff",
    "conversation_start_date": "conversation_start_date",
}
"""For gpt-oss: each chat-template keyword that maps to a Harmony setting, and the
prompt-config field it sets."""


def template_args_from_json(text: str) -> dict[str, object]:
    """The JSON object of a ``--chat-template-args`` flag (mlx-lm's); ValueError says what is
    wrong with any other text."""
    import json

    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"expected a JSON object such as '{{\"enable_thinking\": false}}', got {text!r}"
        )
    return value


class TemplateKwargsError(ValueError):
    """A chat-template keyword the model cannot use, or a value its setting refuses; ``key``
    names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _accepted() -> str:
    return ", ".join(HARMONY_TEMPLATE_KEYS)


def with_template_kwargs(
    config: PromptConfig, kwargs: Mapping[str, Any], *, harmony: bool
) -> PromptConfig:
    """`config` with `kwargs` on top of its own ``chat_template_args`` (a later key wins, as
    in mlx-lm's server, where the request's update the command line's).

    For a model with a chat template the merged keywords stay in ``chat_template_args``. For
    gpt-oss (``harmony``) they become the Harmony fields and ``chat_template_args`` ends
    empty; `TemplateKwargsError` for a key that is not a Harmony setting or a value that
    setting refuses.
    """
    merged = {**config.chat_template_args, **kwargs}
    if not harmony:
        if merged == config.chat_template_args:
            return config
        changes: dict[str, Any] = {"chat_template_args": merged}
        return _updated(config, changes, merged)
    settings: dict[str, Any] = {"chat_template_args": {}}
    for key, value in merged.items():
        field = HARMONY_TEMPLATE_KEYS.get(key)
        if field is None:
            raise TemplateKwargsError(
                key,
                f"chat template keyword {key!r} has no meaning for gpt-oss, whose prompt "
                f"Harmony renders without a chat template; the keywords it accepts are "
                f"{_accepted()}",
            )
        settings[field] = value
    return _updated(config, settings, merged)


def _updated(
    config: PromptConfig, changes: dict[str, Any], merged: Mapping[str, Any]
) -> PromptConfig:
    """`config.updated(**changes)`; a refused value is a `TemplateKwargsError` naming its
    keyword."""
    try:
        return config.updated(**changes)
    except ValidationError as error:
        problem = error.errors()[0]
        loc = [str(part) for part in problem["loc"]]
        field = loc[0] if loc else ""
        key = next((k for k, f in HARMONY_TEMPLATE_KEYS.items() if f == field), field)
        if field == "chat_template_args":
            key = next((k for k in merged if repr(k) in str(problem["msg"])), field)
        message = str(problem["msg"]).removeprefix("Value error, ")
        raise TemplateKwargsError(
            key, f"chat template keyword {key!r}: {message} (got {merged.get(key)!r})"
        ) from error


def with_request_template_kwargs(
    config: PromptConfig, kwargs: Mapping[str, Any], *, reasoning_effort: str | None
) -> PromptConfig:
    """A request's keywords over `config`'s, for any model (the server does not know the
    model type when it plans a request): `with_template_kwargs` without ``harmony``, except
    that the request's own `reasoning_effort` field wins over a keyword of that name, and a
    ``reasoning_effort`` keyword that stands becomes the config's field too, so what an answer
    reports as its effort is what gpt-oss was told. `TemplateKwargsError` as there."""
    kwargs = dict(kwargs)
    if reasoning_effort is not None and (
        "reasoning_effort" in kwargs or "reasoning_effort" in config.chat_template_args
    ):
        kwargs["reasoning_effort"] = reasoning_effort
    config = with_template_kwargs(config, kwargs, harmony=False)
    effort = config.chat_template_args.get("reasoning_effort")
    if effort is None or effort == config.reasoning_effort:
        return config
    try:
        return config.updated(reasoning_effort=effort)
    except ValidationError:  # not a Harmony level: a native template may take it as it is
        return config
