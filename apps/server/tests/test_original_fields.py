"""mlx-harmony 0.4's request fields on ``/v1/chat/completions`` (scripted model): each works,
each bad value is a 400 naming it, and a field the server does not know is a 400 too, while
OpenAI's no-op fields are accepted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlx_harmony.server import ServerSettings
from mlx_harmony.server.cli import build_parser
from mlx_harmony.server.extras import SeedChains, chain_seed

USER = [{"role": "user", "content": "Hello there"}]


def post(server: Any, **body: Any) -> httpx.Response:
    body.setdefault("messages", USER)
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)


def assert_400(response: httpx.Response, param: str, *words: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error["message"]
    return error


def stream_deltas(server: Any, **body: Any) -> list[dict[str, Any]]:
    body.setdefault("messages", USER)
    deltas: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                deltas.extend(c["delta"] for c in chunk["choices"])
    return deltas


# -- return_analysis ----------------------------------------------------------------------------


def test_return_analysis_adds_the_analysis_to_the_message(server: Any) -> None:
    message = post(server, return_analysis=True).json()["choices"][0]["message"]
    assert message["analysis"] == "The user said 'Hello there'."
    assert message["reasoning"] == message["reasoning_content"] == message["analysis"]
    plain = post(server).json()["choices"][0]["message"]
    assert "analysis" not in plain
    assert plain["reasoning"] == "The user said 'Hello there'."


def test_return_analysis_streams_the_analysis_as_delta_analysis(server: Any) -> None:
    deltas = stream_deltas(server, return_analysis=True)
    analysis = "".join(d.get("analysis", "") for d in deltas)
    reasoning = "".join(d.get("reasoning", "") for d in deltas)
    assert analysis == reasoning == "The user said 'Hello there'."
    assert not any("analysis" in d for d in stream_deltas(server))


def test_return_analysis_without_reasoning_gives_only_the_analysis(server: Any) -> None:
    message = post(server, return_analysis=True, include_reasoning=False).json()["choices"][0][
        "message"
    ]
    assert message["analysis"] == "The user said 'Hello there'."
    assert "reasoning" not in message
    assert "reasoning_content" not in message
    deltas = stream_deltas(server, return_analysis=True, include_reasoning=False)
    assert "".join(d.get("analysis", "") for d in deltas) == "The user said 'Hello there'."
    assert not any("reasoning" in d for d in deltas)


# -- profile ------------------------------------------------------------------------------------


@pytest.fixture
def profiled(start_server: Any, tmp_path: Path) -> Any:
    models = tmp_path / "models"
    for name in ("alpha", "beta"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
    profiles = tmp_path / "profiles.json"
    profiles.write_text(
        json.dumps(
            {
                "quick": {
                    "model": "./models/alpha",
                    "prompt_config": {"developer_instructions": "Be quick."},
                },
                "deep": {
                    "model": "./models/beta",
                    "prompt_config": {"developer_instructions": "Think deeply."},
                },
            }
        )
    )
    return start_server(profiles=str(profiles))


def test_profile_picks_a_served_profile_over_model(profiled: Any) -> None:
    response = post(profiled, model="mlx-harmony-demo", profile="deep")
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "deep"
    assert profiled.loads[-1] == "deep"
    assert "Think deeply." in profiled.generator.calls[-1].prompt_text


def test_an_unknown_profile_is_a_400_naming_it_and_the_known_ones(profiled: Any) -> None:
    assert_400(post(profiled, profile="fast"), "profile", "'fast'", "quick", "deep")


def test_profile_on_a_server_without_profiles_is_a_400(server: Any) -> None:
    assert_400(post(server, profile="quick"), "profile", "--profiles")


# -- prompt_config ------------------------------------------------------------------------------


def write_config(path: Path, **values: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    return path


def test_prompt_config_names_the_config_the_server_was_started_with(
    start_server: Any, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "own.json", developer_instructions="Own rules.")
    server = start_server(prompt_config=str(config))
    for name in (str(config), "own.json"):
        assert post(server, prompt_config=name).status_code == 200
        assert "Own rules." in server.generator.calls[-1].prompt_text
    error = assert_400(
        post(server, prompt_config="other.json"), "prompt_config", "--prompt-config-dir"
    )
    assert error["code"] == "prompt_config_not_allowed"


def test_prompt_config_under_the_allowed_folder_is_loaded_and_cached(
    start_server: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "configs"
    config = write_config(folder / "team" / "terse.json", developer_instructions="Be terse.")
    server = start_server(prompt_config_dir=str(folder))
    assert post(server, prompt_config="team/terse.json").status_code == 200
    assert "Be terse." in server.generator.calls[-1].prompt_text
    assert "Be terse." not in (post(server) and server.generator.calls[-1].prompt_text)
    configs = server.app.state.chat.original_fields.prompt_configs
    first = configs.load("team/terse.json")
    assert configs.load("team/terse.json") is first  # cached
    write_config(config, developer_instructions="Be very terse.")
    os.utime(config, ns=(1, 1))  # a new modification time: loaded again
    assert post(server, prompt_config="team/terse.json").status_code == 200
    assert "Be very terse." in server.generator.calls[-1].prompt_text


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../secret.json", ["without '..'"]),
        ("team/../../secret.json", ["without '..'"]),
        ("/etc/passwd", ["relative"]),
        ("escape.json", ["leads out"]),
        ("missing.json", ["not a file"]),
        ("bad.json", ["cannot be used", "unknown key 'temperture'"]),
        ("heavy.json", ["max_kv_size", "when it loads"]),
    ],
)
def test_prompt_config_outside_the_folder_or_broken_is_a_400(
    start_server: Any, tmp_path: Path, name: str, words: list[str]
) -> None:
    folder = tmp_path / "configs"
    write_config(tmp_path / "secret.json", developer_instructions="Secret.")
    write_config(folder / "bad.json", temperture=0.3)
    write_config(folder / "heavy.json", max_kv_size=128)
    (folder / "team").mkdir()
    (folder / "escape.json").symlink_to(tmp_path / "secret.json")
    server = start_server(prompt_config_dir=str(folder))
    assert_400(post(server, prompt_config=name), "prompt_config", *words)
    assert all("Secret." not in call.prompt_text for call in server.generator.calls)


def test_prompt_config_dir_must_be_a_folder_and_has_a_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--prompt-config-dir"):
        ServerSettings(prompt_config_dir=str(tmp_path / "nope"))
    args = build_parser().parse_args(["--prompt-config-dir", str(tmp_path)])
    assert args.prompt_config_dir == str(tmp_path)


# -- sampling and generator options --------------------------------------------------------------


def test_xtc_and_repetition_context_size_reach_the_sampler(server: Any) -> None:
    response = post(
        server,
        xtc_probability=0.5,
        xtc_threshold=0.1,
        repetition_penalty=1.1,
        repetition_context_size=64,
    )
    assert response.status_code == 200, response.text
    sampling = server.generator.calls[-1].sampling
    assert (sampling.xtc_probability, sampling.xtc_threshold) == (0.5, 0.1)
    assert sampling.repetition_context_size == 64
    assert sampling.xtc_special_tokens  # filled in when XTC is on, as the CLI does
    post(server)
    assert server.generator.calls[-1].sampling.xtc_probability == 0.0  # per request only


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("xtc_probability", 1.5, ["xtc_probability"]),
        ("xtc_threshold", 0.9, ["xtc_threshold"]),
        ("repetition_context_size", 0, ["repetition_context_size"]),
        ("loop_detection", "sometimes", ["'off'", "'full'"]),
    ],
)
def test_out_of_range_original_fields_are_a_400_naming_them(
    server: Any, field: str, value: Any, words: list[str]
) -> None:
    assert_400(post(server, **{field: value}), field, *words)


def test_loop_detection_is_per_request(server: Any) -> None:
    assert post(server, loop_detection="full").status_code == 200
    assert server.generator.calls[-1].loop_detection == "full"
    assert post(server, loop_detection="OFF").status_code == 200
    assert server.generator.calls[-1].loop_detection == "off"
    post(server)
    assert server.generator.calls[-1].loop_detection == "cheap"


def test_reseed_each_turn_false_chains_a_seed_across_requests(server: Any) -> None:
    seeds = []
    for _ in range(3):
        assert post(server, seed=7, reseed_each_turn=False).status_code == 200
        seeds.append(server.generator.calls[-1].sampling.seed)
    assert seeds == [chain_seed(7, 0), chain_seed(7, 1), chain_seed(7, 2)]
    assert seeds[0] == 7
    assert len(set(seeds)) == 3
    for _ in range(2):
        assert post(server, seed=7, reseed_each_turn=True).status_code == 200
        assert server.generator.calls[-1].sampling.seed == 7
    # a token count does not move the chain
    assert httpx.post(
        f"{server.url}/v1/tokenize", json={"messages": USER, "seed": 7, "reseed_each_turn": False}
    ).is_success
    assert post(server, seed=7, reseed_each_turn=False).status_code == 200
    assert server.generator.calls[-1].sampling.seed == chain_seed(7, 3)


def test_seed_chains_forget_the_least_recent_seed() -> None:
    chains = SeedChains(size=2)
    assert [chains.next("m", 1), chains.next("m", 1)] == [1, chain_seed(1, 1)]
    chains.next("m", 2)
    chains.next("m", 3)  # seed 1 is forgotten: its chain starts again
    assert chains.next("m", 1) == 1


def test_reseed_each_turn_true_on_a_chaining_server_is_a_400(
    start_server: Any, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "chain.json", reseed_each_turn=False)
    server = start_server(prompt_config=str(config))
    assert_400(post(server, seed=1, reseed_each_turn=True), "reseed_each_turn", "false")
    assert post(server, seed=1, reseed_each_turn=False).status_code == 200
    assert server.generator.calls[-1].sampling.seed == 1  # the generator chains it itself


# -- unknown and no-op fields ---------------------------------------------------------------------


def test_an_unknown_field_is_a_400_naming_it(server: Any) -> None:
    error = assert_400(post(server, min_tokens=5), "min_tokens", "'min_tokens'", "store")
    assert error["code"] == "unknown_parameter"
    assert_400(post(server, functions=[{"name": "f"}]), "functions")


def test_openai_no_op_fields_are_accepted(server: Any) -> None:
    response = post(
        server,
        store=False,
        metadata={"team": "a"},
        service_tier="auto",
        user="someone",
        prompt_cache_key="k",
        safety_identifier="s",
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"input": "hi", "truncation": "auto"}),
        ("/v1/completions", {"prompt": "hi", "min_tokens": 5}),
    ],
)
def test_the_other_endpoints_refuse_unknown_fields_too(
    server: Any, path: str, body: dict[str, Any]
) -> None:
    unknown = next(name for name in body if name not in ("input", "prompt"))
    response = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    error = assert_400(response, unknown, repr(unknown))
    assert error["code"] == "unknown_parameter"


def test_responses_accept_openai_no_op_fields(server: Any) -> None:
    body = {"input": "hi", "service_tier": "auto", "safety_identifier": "s", "store": False}
    response = httpx.post(f"{server.url}/v1/responses", json=body, timeout=30)
    assert response.status_code == 200, response.text


# -- the demo model -----------------------------------------------------------------------------


@pytest.mark.slow
def test_return_analysis_on_the_demo_model(start_server: Any, tmp_path: Path) -> None:
    from mlx_harmony.demo_model import ensure_demo_model

    folder = ensure_demo_model(progress=False)
    server = start_server(real=True, model=os.fspath(folder), preload=True)
    body = {"messages": [{"role": "user", "content": "What time is it?"}], "max_tokens": 60}
    message = post(server, **body, temperature=0, return_analysis=True).json()["choices"][0][
        "message"
    ]
    assert message["analysis"], message
    assert message["analysis"] == message["reasoning"]
    assert "<|" not in message["analysis"]
    deltas = stream_deltas(server, **body, temperature=0, return_analysis=True)
    streamed = "".join(d.get("analysis", "") for d in deltas)
    assert streamed == "".join(d.get("reasoning", "") for d in deltas) == message["analysis"]
