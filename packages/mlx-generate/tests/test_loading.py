from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony.generate import (
    LoadedModel,
    ModelLoadError,
    TokenGenerator,
    is_supported_model_type,
    load_model,
    resolve_model_path,
)


def _copy_model(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).symlink_to(f)
    return dst


def test_a_missing_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_model(missing)
    assert str(missing) in str(info.value)


def test_a_relative_looking_missing_path_is_not_taken_for_a_hub_id() -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path("./models/gpt-oss")


def test_a_file_is_not_a_model_folder(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(f)


def test_a_folder_without_config_names_config_json(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"config\.json is missing"):
        load_model(tmp_path)


def test_a_folder_without_weights_names_the_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = _copy_model(tiny_model_dir, tmp_path / "m", skip=("model.safetensors",))
    with pytest.raises(ModelLoadError, match=r"model\*\.safetensors is missing"):
        load_model(folder)


def test_a_folder_without_tokenizer_names_tokenizer_json(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    folder = _copy_model(tiny_model_dir, tmp_path / "m", skip=("tokenizer.json",))
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is missing"):
        load_model(folder)


def test_an_unsupported_model_type_is_named(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = _copy_model(tiny_model_dir, tmp_path / "m", skip=("config.json",))
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["model_type"] = "transformer_from_the_future"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"'transformer_from_the_future'.*not supported"):
        load_model(folder)


def test_a_config_without_model_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelLoadError, match="no model_type"):
        load_model(tmp_path)


def test_supported_model_types_follow_mlx_lm() -> None:
    assert is_supported_model_type("gpt_oss")
    assert is_supported_model_type("llama")
    assert is_supported_model_type("mistral")  # remapped to llama by mlx-lm
    assert not is_supported_model_type("transformer_from_the_future")
    assert not is_supported_model_type("../evil")


def test_a_hub_id_while_offline_says_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    with pytest.raises(ModelLoadError) as info:
        load_model("mlx-community/surely-not-cached-model")
    message = str(info.value)
    assert "mlx-community/surely-not-cached-model" in message
    assert "offline" in message
    assert "HF_HUB_OFFLINE" in message


def test_a_connection_error_reads_as_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def no_network(*args: object, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("Got: ConnectError: Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ModelLoadError, match="offline"):
        load_model("someone/some-model")


def test_a_hub_id_downloads_through_snapshot_download(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    import huggingface_hub

    asked: list[str] = []

    def fake_download(repo_id: str, **kwargs: object) -> str:
        asked.append(repo_id)
        assert "model*.safetensors" in kwargs["allow_patterns"]  # type: ignore[operator]
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert resolve_model_path("someone/tiny-gpt-oss") == tiny_model_dir
    assert asked == ["someone/tiny-gpt-oss"]


def test_gpt_oss_loads_as_harmony_in_float32_on_the_cpu(tiny: LoadedModel) -> None:
    assert tiny.model_type == "gpt_oss"
    assert tiny.is_harmony
    assert tiny.path.is_dir()
    if mx.default_device() == mx.cpu:
        embed = tiny.model.model.embed_tokens.weight
        assert embed.dtype == mx.float32


@pytest.mark.slow
def test_bfloat16_gpt_oss_is_widened_on_the_cpu(tmp_path: Path, tokenizer_cache: Path) -> None:
    if mx.default_device() != mx.cpu:
        pytest.skip("the float32 cast is for the CPU backend only")
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    model, config = build_random_model("tiny", seed=3, dtype=mx.bfloat16)
    folder = save_model(model, config, tmp_path / "bf16", cache_dir=tokenizer_cache)
    loaded = load_model(folder, lazy=True)
    assert loaded.model.model.embed_tokens.weight.dtype == mx.float32
    generator = TokenGenerator(loaded)
    tokens = list(generator.generate(prompt_tokens=[1, 2, 3], max_tokens=3, stop_tokens=()))
    assert len(tokens) == 3  # GatherMM would refuse bfloat16 on the CPU


def test_a_non_harmony_model_uses_its_chat_template(llama: LoadedModel) -> None:
    assert llama.model_type == "llama"
    assert not llama.is_harmony
    tokens = llama.apply_chat_template([{"role": "user", "content": "Hi there"}])
    text = llama.tokenizer.decode(tokens)
    assert "Hi there" in text
    assert text.endswith("<|start|>assistant")  # the template's generation prompt
    generator = TokenGenerator(llama)
    assert generator.default_stop_tokens == llama.eos_token_ids
    assert 199999 in generator.default_stop_tokens


def test_harmony_stop_tokens_exclude_end(tiny: LoadedModel) -> None:
    generator = TokenGenerator(tiny)
    assert {200002, 200012} <= generator.default_stop_tokens
    assert 200007 not in generator.default_stop_tokens
