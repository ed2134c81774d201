from datetime import UTC, datetime, timedelta, timezone

import pytest

from mlx_harmony.controller import PromptConfig
from mlx_harmony.controller.placeholders import (
    expand_placeholders,
    parse_deterministic_time,
    time_token_values,
)

PARIS_WINTER = datetime(2025, 1, 31, 14, 5, 9, tzinfo=timezone(timedelta(hours=1), "CET"))


def test_time_tokens_have_the_documented_formats() -> None:
    assert time_token_values(PARIS_WINTER) == {
        "<|DATE|>": "2025-01-31",
        "<|DATETIME|>": "2025-01-31T14:05:09+01:00",
        "<|TIMEZ|>": "14:05:09 CET",
        "<|TIMEU|>": "13:05:09 UTC",
    }


def test_utc_day_can_differ_from_the_local_day() -> None:
    late = datetime(2025, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    values = time_token_values(late)
    assert values["<|DATE|>"] == "2025-01-31"
    assert values["<|TIMEU|>"] == "04:30:00 UTC"
    assert values["<|TIMEZ|>"] == "23:30:00 UTC-05:00"


def test_names_are_replaced_and_other_braces_left_alone() -> None:
    text = 'Hi {user}! Reply as {"answer": {user}} {unknown} {{user}} {user:>5} {0} { user }'
    out = expand_placeholders(text, values={"user": "Ada"})
    assert out == 'Hi Ada! Reply as {"answer": Ada} {unknown} {Ada} {user:>5} {0} { user }'


def test_values_are_inserted_verbatim_then_time_tokens_expand() -> None:
    out = expand_placeholders(
        "{greeting} <|DATE|>", values={"greeting": "Today is <|DATE|>, {x}"}, now=PARIS_WINTER
    )
    assert out == "Today is 2025-01-31, {x} 2025-01-31"


def test_expanding_twice_changes_nothing() -> None:
    values = {"name": "Ada"}
    once = expand_placeholders("{name} <|DATETIME|> {other}", values=values, now=PARIS_WINTER)
    assert expand_placeholders(once, values=values, now=PARIS_WINTER) == once


def test_deterministic_time_parsing() -> None:
    assert parse_deterministic_time("2025-01-31T14:05:09Z") == datetime(
        2025, 1, 31, 14, 5, 9, tzinfo=UTC
    )
    naive = parse_deterministic_time("2025-01-31T14:05:09")
    assert naive.utcoffset() == timedelta(0)  # no offset means UTC, not the machine's zone
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_deterministic_time("next tuesday")


FIELDS = {
    "system_model_identity": "You are {bot} on <|DATE|>.",
    "developer_instructions": 'Serve {user}; JSON like {"k": 1}; now <|TIMEZ|> / <|TIMEU|>.',
    "assistant_greeting": "Hello {user}, it is <|DATETIME|>.",
    "conversation_start_date": "<|DATE|>",
    "example_dialogues": [
        [{"role": "user", "content": "Who is {bot}?"}, {"role": "assistant", "content": "Me."}]
    ],
    "placeholders": {"bot": "Harmony", "user": "Ada"},
}


def test_config_fields_expand_from_the_deterministic_time() -> None:
    config = PromptConfig(
        **FIELDS,
        knowledge_cutoff="{bot} <|DATE|>",  # not a placeholder field: kept as written
        deterministic_time_enabled=True,
        deterministic_time_iso="2025-01-31T14:05:09+01:00",
    )
    assert config.system_model_identity == "You are Harmony on 2025-01-31."
    assert config.developer_instructions == (
        'Serve Ada; JSON like {"k": 1}; now 14:05:09 UTC+01:00 / 13:05:09 UTC.'
    )
    assert config.assistant_greeting == "Hello Ada, it is 2025-01-31T14:05:09+01:00."
    assert config.conversation_start_date == "2025-01-31"
    assert config.example_dialogues[0][0].content == "Who is Harmony?"
    assert config.knowledge_cutoff == "{bot} <|DATE|>"
    # Loading the dumped config again (e.g. from a chat log) gives the same text.
    assert PromptConfig.model_validate(config.model_dump()) == config


def test_config_fields_expand_from_the_clock_when_not_deterministic() -> None:
    before = datetime.now().astimezone()
    config = PromptConfig(**FIELDS, deterministic_time_iso="2001-01-01T00:00:00Z")
    after = datetime.now().astimezone()
    stamp = config.assistant_greeting.removeprefix("Hello Ada, it is ").removesuffix(".")
    moment = datetime.fromisoformat(stamp)
    assert before.replace(microsecond=0) <= moment <= after
    assert config.conversation_start_date == moment.strftime("%Y-%m-%d")
    assert "2001" not in config.assistant_greeting


def test_expansion_happens_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_harmony.controller import config as config_module

    config = PromptConfig(developer_instructions="Now: <|DATETIME|>")
    loaded_text = config.developer_instructions
    assert "<|" not in loaded_text

    class Later(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return datetime(2099, 1, 1, tzinfo=UTC)

    monkeypatch.setattr(config_module, "datetime", Later)
    assert config.now().year == 2099  # the clock moved on...
    # ...but the text was frozen at load, also through effective() and updated().
    assert config.effective().developer_instructions == loaded_text
    assert config.updated(temperature=0.5).developer_instructions == loaded_text
    assert "2099" in PromptConfig(developer_instructions="<|DATE|>").developer_instructions


def test_nested_placeholders_and_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="placeholders do not nest"):
        PromptConfig(placeholders={"a": "x {b}", "b": "y"})
    with pytest.raises(ValueError, match="must be an identifier"):
        PromptConfig(placeholders={"not valid": "x"})
