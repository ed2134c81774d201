"""Golden files: one folder per shape of file (ours and the original mlx-harmony's), the
expected v3 of every one, and v3 files that load and save byte for byte.

To accept new output after an intended format change, run with
``MLX_HARMONY_UPDATE_GOLDEN=1`` and review the diff of ``tests/golden/*_to_v3``.
"""

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from mlx_harmony.chat_history import (
    Shape,
    check_chat,
    detect_shape,
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
SOURCES = {
    "v1": Shape.V1,
    "v2": Shape.V2,
    "original_v1": Shape.V1,
    "original_v2": Shape.ORIGINAL_V2,
}
CASES = [(folder, p) for folder in SOURCES for p in sorted((GOLDEN / folder).glob("*.json"))]
V3 = sorted((GOLDEN / "v3").glob("*.json")) + sorted(GOLDEN.glob("*_to_v3/*.json"))
EXAMPLE = Path(__file__).parents[3] / "configs" / "conversation.example.json"
UPDATE = os.environ.get("MLX_HARMONY_UPDATE_GOLDEN") == "1"


def _id(case: tuple[str, Path]) -> str:
    return f"{case[0]}/{case[1].name}"


def test_every_source_golden_has_its_expected_v3_and_nothing_else() -> None:
    assert len(CASES) >= 13
    for folder in SOURCES:
        expected = sorted(p.name for p in (GOLDEN / f"{folder}_to_v3").glob("*.json"))
        assert expected == sorted(p.name for p in (GOLDEN / folder).glob("*.json"))


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_every_shape_migrates_to_the_expected_v3_text_losing_nothing(
    case: tuple[str, Path],
) -> None:
    folder, path = case
    data = json.loads(path.read_text())
    assert detect_shape(data) is SOURCES[folder]
    text = dumps_chat(load_chat(path, check=False))
    expected_path = GOLDEN / f"{folder}_to_v3" / path.name
    if UPDATE:
        expected_path.write_text(text)
    assert text == expected_path.read_text()
    assert meaning_difference(meaning(data), meaning(json.loads(text))) is None


@pytest.mark.parametrize("path", V3, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_v3_golden_loads_and_saves_byte_for_byte(path: Path) -> None:
    text = path.read_text()
    assert detect_version(json.loads(text)) == 3
    log = loads_chat(text, check=False)
    assert dumps_chat(log) == text


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "original_v2"], ids=_id)
def test_one_chat_of_one_branch_goes_down_to_v1_and_back(case: tuple[str, Path]) -> None:
    folder, path = case
    data = json.loads(path.read_text())
    v3_text = (GOLDEN / f"{folder}_to_v3" / path.name).read_text()
    down = migrate(json.loads(v3_text), to=1)
    assert detect_version(down) == 1
    assert meaning_difference(meaning(data), meaning(down)) is None
    assert dumps_chat(loads_chat(migrate(down), check=False)) == v3_text


def test_the_original_v2_keeps_both_chats_their_order_and_the_branched_tree() -> None:
    path = GOLDEN / "original_v2" / "two_chats_branched.json"
    data = json.loads(path.read_text())
    log = load_chat(path)
    assert check_chat(log) == []
    assert log.chat_order == ["chat-b", "chat-a"]
    assert log.active_chat_id == "chat-a"
    assert log.model_extra == {"client": {"name": "mlx-harmony", "version": "0.4.0"}}
    chat = log.active
    h = chat.header
    assert (h.model_path, h.last_model_path) == ("~/models/gpt-oss-20b", "~/models/gpt-oss-120b")
    assert (h.prompt_config_path, h.resume_prompt_config_path) == (
        "configs/prompt-config.example.json",
        "configs/Mia.json",
    )
    assert h.last_hyperparameters == {"temperature": 0.9, "top_p": 0.9}
    assert h.max_context_tokens == 8192
    assert h.model_extra == {  # the example object: two moments 12 h apart, kept
        "pinned": True,
        "created_at_as_written": {"unix": 1736251200.0, "iso": "2025-01-07T00:00:00Z"},
    }
    source = data["chats"]["chat-a"]["messages"]
    assert [m.id for m in chat.messages] == [m["id"] for m in source]
    for m, raw in zip(chat.messages, source, strict=True):
        assert m.content == raw["content"]  # byte for byte
        assert m.parent_id == raw["parent_id"]
        assert m.model_extra["cache_key"] == raw["cache_key"]
        assert m.analysis == raw.get("analysis")
        assert m.timestamp.timestamp() == raw["timestamp"]["unix"]
        if m.role in ("assistant", "tool"):
            assert effective_hyperparameters(chat, m.id) == raw["hyperparameters"]
    # the retry at a1 made two branches; the newest is active
    assert [
        (b.leaf.id, b.length, b.fork.id if b.fork else None, b.active) for b in chat.branches()
    ] == [
        ("a2", 2, "a1", False),
        ("a7", 6, "a1", True),
    ]
    assert [m.id for m in chat.branch()] == ["a1", "a3", "a4", "a5", "a6", "a7"]
    call, result = chat.message("a5"), chat.message("a6")
    assert call.tool_call_id == result.tool_call_id == "call-a5"
    assert (result.role, result.name, result.recipient, result.channel) == (
        "tool",
        "python",
        "assistant",
        "commentary",
    )
    other = log.chat("chat-b")
    assert [m.content for m in other.branch()] == ["Hi", "Hello!"]


def test_the_original_v1_keeps_paths_tools_and_both_timestamp_forms() -> None:
    log = load_chat(GOLDEN / "original_v1" / "iso_strings.json")
    h = log.header
    assert (h.model_path, h.prompt_config_path) == (
        "~/models/gpt-oss-20b",
        "configs/prompt-config.example.json",
    )
    assert (h.tools, h.max_context_tokens, h.model_extra) == ({}, 8192, {"profile": "gpt-oss-20b"})
    tool = next(m for m in log.messages if m.role == "tool")
    call = next(m for m in log.messages if m.recipient == "python")
    assert (tool.name, tool.recipient, tool.channel) == ("python", "assistant", "commentary")
    assert tool.tool_call_id == call.tool_call_id
    assert log.messages[1].content == "What is 2**10?  Use python.\n\tThanks — ☕"
    assert log.messages[-1].analysis == "The tool printed 1024."
    assert log.messages[-1].model_extra == {"rating": "thumbs-up"}

    objects = load_chat(GOLDEN / "original_v1" / "unix_iso_objects.json")
    times = [m.timestamp for m in objects.messages]
    assert times[2].utcoffset() == timedelta(hours=-5)  # naive ISO + unix: the local offset
    assert times[2].timestamp() == 1736208060.0
    assert times[3].timestamp() == 1736208090.5  # unix only
    assert times[4].utcoffset() == timedelta(hours=1)  # ISO only, offset kept
    # the example object names two moments 12 h apart: ISO wins, the object is kept
    assert objects.header.model_extra == {
        "created_at_as_written": {"unix": 1736251200.0, "iso": "2025-01-07T00:00:00Z"}
    }
    assert objects.messages[3].model_extra == {"legacy_hyperparameters": {"temperature": 0.8}}


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
    shapes = {detect_shape(json.loads(b)) for b in blocks}
    assert shapes == {Shape.V1, Shape.V2, Shape.ORIGINAL_V2, Shape.V3}
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
    chat = log.active
    leaves = chat.leaves()
    assert len(leaves) == 2  # the retried answer and the new one
    assert chat.leaf().content == "2**10 is 1024."
    assert chat.effective_hyperparameters(chat.leaf().id) == {"temperature": 0.7, "top_p": 0.95}
    assert chat.leaf().timing is not None
    assert chat.leaf().timing.generation_tps == 61.0
    assert (chats / "today.json.v1.bak").read_bytes() == EXAMPLE.read_bytes()
