"""mlx-harmony 0.4's prompt configs and profiles files load (fixtures in tests/data)."""

import json
import warnings
from datetime import datetime
from pathlib import Path

import pytest

from mlx_harmony.controller import ConfigError, PromptConfig
from mlx_harmony.controller.config import ConfigWarning
from mlx_harmony.controller.placeholders import expand_placeholders
from mlx_harmony.controller.profiles import Profiles

DATA = Path(__file__).parent / "data" / "mlx-harmony-0.4"

ORIGINAL_KEYS = [
    "system_model_identity",
    "reasoning_effort",
    "conversation_start_date",
    "knowledge_cutoff",
    "developer_instructions",
    "assistant_greeting",
    "example_dialogues",
    "placeholders",
    "deterministic_time_enabled",
    "deterministic_time_iso",
    "max_tokens",
    "max_context_tokens",
    "max_context_tokens_margin",
    "performance_mode",
    "perf_max_tokens",
    "perf_max_context_tokens",
    "perf_max_kv_size",
    "perf_prompt_token_budget",
    "temperature",
    "top_p",
    "min_p",
    "min_tokens_to_keep",
    "top_k",
    "xtc_probability",
    "xtc_threshold",
    "xtc_special_tokens",
    "repetition_penalty",
    "repetition_context_size",
    "loop_detection",
    "max_kv_size",
    "mlock",
    "lazy",
    "seed",
    "reseed_each_turn",
    "clear_cache",
    "clear_cache_interval",
    "clear_cache_generation",
    "log_memory_stats",
    "log_timing_stats",
    "end_token_strings",
    "truncate_thinking",
    "truncate_response",
    "logs_dir",
    "chats_dir",
    "models_dir",
    "prewarm_cache",
]


def test_the_original_readme_example_loads_with_exactly_one_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = PromptConfig.from_file(DATA / "readme-prompt-config.json")
    assert [type(w.message) for w in caught] == [ConfigWarning]
    assert "prewarm_cache" in str(caught[0].message)
    assert "page cache" in str(caught[0].message)
    assert config.reasoning_effort == "medium"
    assert config.system_model_identity.startswith("You are Dave on ")
    assert config.developer_instructions == "Address the user as Morgan and be concise."
    assert config.assistant_greeting == "Hello Morgan, I'm Dave. How can I help you today?"
    assert config.example_dialogues[0][1].content.startswith("Hello Morgan! I'm Dave")
    assert config.sampling.temperature == 0.8
    assert config.sampling.top_k == 40
    assert config.sampling.repetition_context_size == 20
    assert config.max_tokens == 1024
    assert config.mlock is False
    assert "prewarm_cache" not in config.model_dump()


EVERY_KEY = {
    "system_model_identity": "You are a helper.",
    "reasoning_effort": "LOW",
    "conversation_start_date": "<|date|>",
    "knowledge_cutoff": "2024-06",
    "developer_instructions": "Be brief.",
    "assistant_greeting": "Hi.",
    "example_dialogues": [],
    "placeholders": {},
    "deterministic_time_enabled": False,
    "deterministic_time_iso": None,
    "max_tokens": 512,
    "max_context_tokens": 4096,
    "max_context_tokens_margin": 256,
    "performance_mode": False,
    "perf_max_tokens": None,
    "perf_max_context_tokens": None,
    "perf_max_kv_size": None,
    "perf_prompt_token_budget": None,
    "temperature": 0.7,
    "top_p": 0.95,
    "min_p": 0.0,
    "min_tokens_to_keep": 1,
    "top_k": 0,
    "xtc_probability": 0.0,
    "xtc_threshold": 0.1,
    "xtc_special_tokens": [],
    "repetition_penalty": 1.1,
    "repetition_context_size": 64,
    "loop_detection": "off",
    "max_kv_size": None,
    "mlock": False,
    "lazy": False,
    "seed": 7,
    "reseed_each_turn": True,
    "clear_cache": True,
    "clear_cache_interval": 2,
    "clear_cache_generation": True,
    "log_memory_stats": False,
    "log_timing_stats": False,
    "end_token_strings": [],
    "truncate_thinking": None,
    "truncate_response": None,
    "logs_dir": None,
    "chats_dir": None,
    "models_dir": "~/models",
    "prewarm_cache": False,
}


def test_every_original_key_loads() -> None:
    """Each key of mlx-harmony 0.4 loads; the ones not implemented at values asking nothing."""
    assert sorted(EVERY_KEY) == sorted(ORIGINAL_KEYS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = PromptConfig.from_dict(EVERY_KEY)
    assert [type(w.message) for w in caught] == [ConfigWarning]  # prewarm_cache
    assert config.reasoning_effort == "low"
    assert config.clear_cache_generation == 256
    assert config.reseed_each_turn is True
    assert config.sampling.seed == 7
    assert config.sampling.repetition_context_size == 64
    assert config.models_dir == Path("~/models").expanduser()
    assert config.conversation_start_date == datetime.now().astimezone().strftime("%Y-%m-%d")


def test_the_original_keys_load_with_their_values(tmp_path: Path) -> None:
    config = PromptConfig.from_dict(
        {
            "lazy": True,
            "log_timing_stats": True,
            "truncate_thinking": 200,
            "truncate_response": False,
            "logs_dir": "logs",
            "chats_dir": "~/chats",
            "perf_prompt_token_budget": 2048,
        },
        base_dir=tmp_path,
    )
    assert config.lazy
    assert config.log_timing_stats
    assert (config.truncate_thinking, config.truncate_response) == (200, None)
    assert config.logs_dir == tmp_path / "logs"
    assert config.chats_dir == Path("~/chats").expanduser()
    assert config.prompt_token_budget() is None  # only in performance mode
    assert config.updated(performance_mode=True).prompt_token_budget() == 2048


def test_original_keys_with_bad_values_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="truncate_thinking"):
        PromptConfig.from_dict({"truncate_thinking": -1})


def test_lower_case_time_tokens_expand_like_upper_case() -> None:
    now = datetime.fromisoformat("2025-01-31T14:05:09+01:00")
    lower = expand_placeholders("<|date|> <|datetime|> <|timez|> <|timeu|>", now=now)
    upper = expand_placeholders("<|DATE|> <|DATETIME|> <|TIMEZ|> <|TIMEU|>", now=now)
    assert lower == upper == "2025-01-31 2025-01-31T14:05:09+01:00 14:05:09 UTC+01:00 13:05:09 UTC"


def test_the_original_flat_profiles_file_loads() -> None:
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        profiles = Profiles.from_file(DATA / "profiles.json")
        resolved = profiles.resolve("gpt-oss-20b")
    assert profiles.names == ("gpt-oss-20b",)
    assert profiles.default is None
    assert resolved.model == str(Path("~/models/gpt-oss-20b").expanduser())
    assert resolved.prompt_config_path == (DATA / "configs/prompt-config.example.json").resolve()
    assert resolved.prompt_config.placeholders == {"assistant": "Dave", "user": "Morgan"}


def test_a_flat_file_with_a_bad_entry_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"a": {"model": "m", "prompt_cfg": "x.json"}}))
    with pytest.raises(ConfigError, match="prompt_cfg"):
        Profiles.from_file(path)
