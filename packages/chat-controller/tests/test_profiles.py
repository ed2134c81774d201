import json
from pathlib import Path

import pytest

from mlx_harmony.controller import ConfigError, Profiles

REPO = Path(__file__).resolve().parents[3]


def write_profiles(folder: Path, data: dict) -> Path:
    path = folder / "profiles.json"
    path.write_text(json.dumps(data))
    return path


def test_example_profiles_resolve() -> None:
    profiles = Profiles.from_file(REPO / "configs" / "profiles.example.json")
    assert profiles.default in profiles
    default = profiles.resolve()
    assert default.name == profiles.default
    assert default.prompt_config_path == REPO / "configs" / "prompt-config.example.json"
    assert default.prompt_config.max_tokens == 4096
    for name in profiles:
        assert profiles.resolve(name).model


def test_paths_resolve_against_the_profiles_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "fast.json").write_text('{"reasoning_effort": "low", "max_tokens": 64}')
    path = write_profiles(
        tmp_path,
        {
            "profiles": {
                "fast": {"model": "./models/m", "prompt_config": "cfg/fast.json"},
                "hub": {"model": "org/repo", "prompt_config": {"temperature": 0.2}},
                "bare": {"model": "name-in-models-dir"},
            }
        },
    )
    profiles = Profiles.from_file(path)
    fast = profiles.resolve("fast")
    assert fast.model == str(tmp_path / "models" / "m")
    assert fast.prompt_config.max_tokens == 64
    assert fast.prompt_config.reasoning_effort == "low"
    hub = profiles.resolve("hub")
    assert (hub.model, hub.prompt_config.setting("temperature"), hub.prompt_config_path) == (
        "org/repo",
        0.2,
        None,
    )
    assert profiles.resolve("bare").model == "name-in-models-dir"


def test_unknown_name_lists_known_names_closest_first(tmp_path: Path) -> None:
    path = write_profiles(
        tmp_path,
        {"profiles": {n: {"model": "m"} for n in ("alpha", "gpt-oss-120b", "gpt-oss-20b")}},
    )
    with pytest.raises(ConfigError) as info:
        Profiles.from_file(path).resolve("gpt-oss-2b")
    assert "unknown profile 'gpt-oss-2b'; known profiles: gpt-oss-20b, gpt-oss-120b, alpha" in str(
        info.value
    )


def test_no_name_and_no_default(tmp_path: Path) -> None:
    profiles = Profiles.from_file(write_profiles(tmp_path, {"profiles": {"a": {"model": "m"}}}))
    with pytest.raises(ConfigError, match="no profile named and no 'default'"):
        profiles.resolve()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"profiles": {"a": {"model": "m", "prompt_confg": "x"}}}, "did you mean 'prompt_config'"),
        ({"profiles": {"a": {"prompt_config": "x"}}}, "profiles.a.model: Field required"),
        ({"profile": {}}, "did you mean 'profiles'"),
        ({"default": "b", "profiles": {"a": {"model": "m"}}}, "unknown default profile 'b'"),
    ],
)
def test_file_errors(tmp_path: Path, data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Profiles.from_file(write_profiles(tmp_path, data))
    assert expected in str(info.value)


def test_a_bad_prompt_config_names_the_profile(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"top_p": 2}')
    path = write_profiles(
        tmp_path, {"profiles": {"x": {"model": "m", "prompt_config": "bad.json"}}}
    )
    with pytest.raises(ConfigError) as info:
        Profiles.from_file(path).resolve("x")
    assert "profile 'x'" in str(info.value)
    assert "top_p must be in (0, 1]" in str(info.value)
    path = write_profiles(tmp_path, {"profiles": {"y": {"model": "m", "prompt_config": "no.json"}}})
    with pytest.raises(ConfigError, match="does not exist"):
        Profiles.from_file(path).resolve("y")
