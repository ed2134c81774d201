import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlx_harmony.controller import (
    SETTING_NAMES,
    ConfigError,
    PromptConfig,
    render_config_reference,
    render_prompt_config_schema,
)
from mlx_harmony.sampling import SamplingParams

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
README = Path(__file__).resolve().parents[1] / "README.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


def test_committed_schema_matches_the_model() -> None:
    committed = (CONFIGS / "prompt-config.schema.json").read_text()
    assert committed == render_prompt_config_schema(), (
        "configs/prompt-config.schema.json is stale; regenerate it with "
        "`uv run python -m mlx_harmony.controller.schema configs/prompt-config.schema.json`"
    )


def test_readme_reference_table_matches_the_model() -> None:
    assert render_config_reference() in README.read_text(), (
        "the key table in packages/chat-controller/README.md is stale; paste "
        "render_config_reference() into it"
    )


def test_example_config_loads_and_sets_what_it_shows() -> None:
    path = CONFIGS / "prompt-config.example.json"
    raw = json.loads(path.read_text())
    config = PromptConfig.from_file(path)
    assert config.max_tokens == raw["max_tokens"]
    assert config.perf_max_tokens == raw["perf_max_tokens"]
    assert config.assistant_greeting is not None
    assert "{user_name}" not in config.assistant_greeting
    assert '{"answer": "..."}' in (config.developer_instructions or "")
    assert config.models_dir == Path(raw["models_dir"]).expanduser()


def test_example_config_covers_every_key() -> None:
    raw = json.loads((CONFIGS / "prompt-config.example.json").read_text())
    missing = set(PromptConfig.model_fields) - set(raw)
    assert missing == set(), f"add {sorted(missing)} to configs/prompt-config.example.json"


def test_sampling_is_nested_and_setting_names_list_its_keys_flat() -> None:
    assert PromptConfig.model_fields["sampling"].annotation is SamplingParams
    assert set(PromptConfig.SAMPLING_FIELDS) == set(SamplingParams.model_fields)
    assert not set(PromptConfig.SAMPLING_FIELDS) & set(PromptConfig.model_fields)
    assert set(SETTING_NAMES) == (set(PromptConfig.model_fields) - {"sampling"}) | set(
        SamplingParams.model_fields
    )


def test_flat_sampling_keys_of_older_files_load_into_sampling(tmp_path: Path) -> None:
    flat = PromptConfig.from_file(
        write(tmp_path, '{"temperature": 0.5, "top_k": 7, "seed": null, "max_tokens": 9}')
    )
    nested = PromptConfig.model_validate(
        {"sampling": {"temperature": 0.5, "top_k": 7}, "max_tokens": 9}
    )
    assert flat == nested
    assert flat.sampling.model_fields_set == {"temperature", "top_k"}  # null: the default
    assert flat.settings_set() == {"temperature", "top_k", "max_tokens"}
    assert (flat.setting("temperature"), flat.setting("min_p")) == (0.5, None)


def test_a_sampling_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '{"temperature": 0.5, "sampling": {"temperature": 0.7}}')
    with pytest.raises(ConfigError, match="temperature given both at the top level and inside"):
        PromptConfig.from_file(path)


def test_bad_sampling_values_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top_p"):
        PromptConfig.from_file(write(tmp_path, '{"top_p": 2}'))
    with pytest.raises(ConfigError, match=r"unknown key 'temprature' \(did you mean 'temperature'"):
        PromptConfig.from_file(write(tmp_path, '{"temprature": 2}'))


def test_updated_takes_flat_sampling_keys_and_none_restores_the_default() -> None:
    config = PromptConfig(temperature=0.3).updated(top_k=5)
    assert config.sampling.model_fields_set == {"temperature", "top_k"}
    reset = config.updated(temperature=None)
    assert reset.setting("temperature") is None
    assert reset.sampling.temperature == SamplingParams().temperature


def test_sampling_params_use_the_set_keys_then_overrides() -> None:
    config = PromptConfig(temperature=0.3, top_k=40, logit_bias={"7": -1})
    params = config.sampling_params(top_k=None, seed=5)
    expected = SamplingParams(temperature=0.3, top_k=40, logit_bias={7: -1.0}, seed=5)
    assert params.model_dump() == expected.model_dump()
    assert PromptConfig().sampling_params().model_dump() == SamplingParams().model_dump()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PromptConfig.from_file(tmp_path / "nope.json")


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "temperature": 0.5,\n  "top_p": ,\n}')
    with pytest.raises(ConfigError) as info:
        PromptConfig.from_file(path)
    assert str(info.value).startswith(f"{path}:3:12: invalid JSON")


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a JSON object"):
        PromptConfig.from_file(write(tmp_path, "[1, 2]"))


def test_unknown_key_suggests_the_closest_valid_one(tmp_path: Path) -> None:
    path = write(tmp_path, '{"tempreature": 0.7, "max_token": 10, "zzzz": 1}')
    with pytest.raises(ConfigError) as info:
        PromptConfig.from_file(path)
    message = str(info.value)
    assert "unknown key 'tempreature' (did you mean 'temperature'?)" in message
    assert "unknown key 'max_token' (did you mean 'max_tokens'?)" in message
    assert "unknown key 'zzzz' (the valid keys" in message  # nothing close: no guess
    assert message.startswith(str(path))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"top_p": 0}, "top_p must be in (0, 1]"),
        ({"temperature": -1}, "temperature must be a finite number >= 0"),
        ({"seed": -3}, "seed must be an integer in [0, "),
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1 (got 0)"),
        ({"clear_cache_interval": 0}, "clear_cache_interval: Input should be greater than"),
        (
            {"loop_detection": "sometimes"},
            "loop_detection: Input should be 'off', 'cheap' or 'full'",
        ),
        (
            {"reasoning_effort": "max"},
            "reasoning_effort: Input should be 'low', 'medium' or 'high'",
        ),
        (
            {"example_dialogues": [[{"role": "robot", "content": "x"}]]},
            "example_dialogues.0.0.role",
        ),
        ({"deterministic_time_iso": "yesterday"}, "must be an ISO 8601 date-time"),
        ({"deterministic_time_enabled": True}, "deterministic_time_iso is not set"),
    ],
)
def test_bad_values_name_the_field_and_range(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        PromptConfig.from_dict(data, source="cfg.json")
    assert expected in str(info.value)
    assert str(info.value).startswith("cfg.json: ")


def test_reasoning_and_loop_detection_accept_any_case() -> None:
    config = PromptConfig(reasoning_effort="HIGH", loop_detection="Full")
    assert (config.reasoning_effort, config.loop_detection) == ("high", "full")


def test_schema_key_is_allowed_for_editors(tmp_path: Path) -> None:
    config = PromptConfig.from_file(write(tmp_path, '{"$schema": "x.json", "top_k": 3}'))
    assert config.setting("top_k") == 3


def test_relative_models_dir_is_taken_from_the_config_folder(tmp_path: Path) -> None:
    config = PromptConfig.from_file(write(tmp_path, '{"models_dir": "weights"}'))
    assert config.models_dir == tmp_path / "weights"


def test_effective_applies_perf_overrides_only_in_performance_mode() -> None:
    values = {
        "max_tokens": 4000,
        "max_context_tokens": 30000,
        "max_kv_size": None,
        "reasoning_effort": "high",
        "perf_max_tokens": 500,
        "perf_max_kv_size": 2048,
        "perf_reasoning_effort": "low",
    }
    normal = PromptConfig(**values)
    assert normal.effective() is normal
    fast = PromptConfig(**values, performance_mode=True).effective()
    assert (fast.max_tokens, fast.max_kv_size, fast.reasoning_effort) == (500, 2048, "low")
    assert fast.max_context_tokens == 30000  # perf_max_context_tokens unset: kept
    assert fast.effective() == fast


def test_generator_options_map_every_generator_key() -> None:
    pytest.importorskip("mlx.core")
    from mlx_harmony.generate import GeneratorOptions

    config = PromptConfig(
        max_kv_size=4096,
        loop_detection="full",
        reseed_each_turn=True,
        mlock=True,
        clear_cache=True,
        clear_cache_interval=3,
        clear_cache_generation=128,
        log_memory_stats=True,
    )
    assert config.generator_options() == GeneratorOptions(
        max_kv_size=4096,
        loop_detection="full",
        reseed_each_turn=True,
        mlock=True,
        clear_cache_interval=3,
        clear_cache_tokens=128,
        log_memory_stats=True,
    )
    assert PromptConfig(clear_cache_interval=3).generator_options().clear_cache_interval == 0
    perf = PromptConfig(max_kv_size=8192, perf_max_kv_size=1024, performance_mode=True)
    assert perf.generator_options().max_kv_size == 1024


def test_clear_cache_generation_takes_the_original_flag() -> None:
    assert PromptConfig(clear_cache_generation=True).clear_cache_generation == 256
    assert PromptConfig(clear_cache_generation=False).clear_cache_generation == 0
    assert PromptConfig(clear_cache_generation=64).clear_cache_generation == 64


def test_config_is_frozen_and_updated_validates() -> None:
    config = PromptConfig()
    with pytest.raises(ValidationError):
        config.max_tokens = 1  # type: ignore[misc]
    assert config.updated(temperature=2.5).sampling.temperature == 2.5
    with pytest.raises(ValidationError, match="top_p must be in"):
        config.updated(top_p=0)
    assert config.updated(top_k=5).settings_set() == {"top_k"}
