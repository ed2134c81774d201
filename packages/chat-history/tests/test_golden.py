"""Golden files: one folder per schema version, and the expected v2 of every v1 file.

To accept new output after an intended format change, run with
``MLX_HARMONY_UPDATE_GOLDEN=1`` and review the diff of ``tests/golden/v1_to_v2``.
"""

import json
import os
from pathlib import Path

import pytest

from mlx_harmony.chat_history import (
    check_chat,
    detect_version,
    dumps_chat,
    effective_hyperparameters,
    load_chat,
    loads_chat,
    meaning,
    meaning_difference,
    migrate,
)

GOLDEN = Path(__file__).parent / "golden"
V1 = sorted((GOLDEN / "v1").glob("*.json"))
V2 = sorted((GOLDEN / "v2").glob("*.json"))
EXAMPLE = Path(__file__).parents[3] / "configs" / "conversation.example.json"
UPDATE = os.environ.get("MLX_HARMONY_UPDATE_GOLDEN") == "1"


def test_every_v1_golden_has_its_expected_v2_and_nothing_else() -> None:
    assert len(V1) >= 6
    assert len(V2) >= 3
    expected = sorted(p.name for p in (GOLDEN / "v1_to_v2").glob("*.json"))
    assert expected == [p.name for p in V1]


@pytest.mark.parametrize("path", V1, ids=lambda p: p.name)
def test_v1_golden_migrates_to_the_expected_v2_text(path: Path) -> None:
    data = json.loads(path.read_text())
    assert detect_version(data) == 1
    text = dumps_chat(load_chat(path, check=False))
    expected_path = GOLDEN / "v1_to_v2" / path.name
    if UPDATE:
        expected_path.write_text(text)
    assert text == expected_path.read_text()
    assert meaning_difference(meaning(data), meaning(json.loads(text))) is None


@pytest.mark.parametrize("path", V1, ids=lambda p: p.name)
def test_v1_golden_comes_back_from_v2_with_the_same_meaning(path: Path) -> None:
    data = json.loads(path.read_text())
    v2 = json.loads((GOLDEN / "v1_to_v2" / path.name).read_text())
    down = migrate(v2, to=1)
    assert meaning_difference(meaning(data), meaning(down)) is None
    for before, after in zip(data["messages"], down["messages"], strict=True):
        assert after["content"] == before["content"]
        assert after.get("hyperparameters") == (before.get("hyperparameters") or None)


@pytest.mark.parametrize("path", V2, ids=lambda p: p.name)
def test_v2_golden_loads_clean_and_saves_byte_for_byte(path: Path) -> None:
    text = path.read_text()
    log = loads_chat(text)
    assert check_chat(log) == []
    assert dumps_chat(log) == text


@pytest.mark.parametrize("path", V2, ids=lambda p: p.name)
def test_v2_golden_survives_a_trip_through_v1(path: Path) -> None:
    text = path.read_text()
    down = migrate(json.loads(text), to=1)
    assert detect_version(down) == 1
    assert dumps_chat(loads_chat(migrate(down))) == text


def test_golden_v2_hyperparameters_resolve_per_turn() -> None:
    log = load_chat(GOLDEN / "v2" / "basic.json")
    answers = [i for i, m in enumerate(log.messages) if m.role == "assistant"]
    assert [effective_hyperparameters(log, i) for i in answers] == [
        {"temperature": 0.7, "top_p": 0.95, "max_tokens": 1024, "reasoning_effort": "medium"},
        {"temperature": 0.2, "top_p": 0.95, "max_tokens": 256, "reasoning_effort": "medium"},
        {"temperature": 0.7, "top_p": 0.95, "max_tokens": 1024},
    ]


def test_the_example_config_is_a_v1_log_that_uses_every_feature() -> None:
    data = json.loads(EXAMPLE.read_text())
    assert detect_version(data) == 1
    roles = {m["role"] for m in data["messages"]}
    assert roles == {"system", "user", "assistant", "tool"}
    assert any("analysis" in m for m in data["messages"])
    assert any("recipient" in m for m in data["messages"])
    log = load_chat(EXAMPLE)
    assert check_chat(log) == []
    tool = next(m for m in log.messages if m.role == "tool")
    call = next(m for m in log.messages if m.recipient)
    assert tool.tool_call_id == call.tool_call_id
    # the last answer changed temperature: only that change is stored
    assert log.messages[-1].hyperparameters == {"temperature": 0.7}


def test_the_readme_examples_load_clean() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```json\n")[1:]]
    versions = sorted(detect_version(json.loads(b)) for b in blocks)
    assert versions == [1, 2]
    for block in blocks:
        assert check_chat(json.loads(block)) == []


def test_the_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    chats = tmp_path / "chats"
    chats.mkdir()
    (chats / "today.json").write_text(EXAMPLE.read_text())
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        namespace: dict[str, object] = {}
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    log = load_chat(chats / "today.json")
    assert log.messages[-1].content == "2**10 is 1024."
    assert log.effective_hyperparameters(-1) == {"temperature": 0.7, "top_p": 0.95}
    assert log.messages[-1].timing is not None
    assert log.messages[-1].timing.generation_tps == 61.0
