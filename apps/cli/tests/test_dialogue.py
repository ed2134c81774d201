"""mlx-harmony-convert-dialogue: the role: text format to JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_harmony.cli.dialogue import DialogueError, main, parse_dialogues
from mlx_harmony.controller import PromptConfig

TEXT = """\
user: What is the capital of France?
assistant: Paris.

user: Write a haiku.
assistant: Old pond,
a frog jumps in:

the sound of water.


user:
  Indented continuation
\\assistant: is text here
"""


def test_roles_continuations_and_blank_lines() -> None:
    [dialogue] = parse_dialogues(TEXT)
    assert dialogue == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Old pond,\na frog jumps in:\n\nthe sound of water."},
        {"role": "user", "content": "  Indented continuation\nassistant: is text here"},
    ]


def test_roles_are_case_insensitive_and_one_space_after_the_colon_is_dropped() -> None:
    [dialogue] = parse_dialogues("User:hi\nASSISTANT:   spaced\nsystem: s\ndeveloper: d\n")
    assert [(m["role"], m["content"]) for m in dialogue] == [
        ("user", "hi"),
        ("assistant", "  spaced"),
        ("system", "s"),
        ("developer", "d"),
    ]


def test_text_that_merely_has_a_colon_continues_the_message() -> None:
    [dialogue] = parse_dialogues("user: Look\nNote: this is text\nhttps://example.com\n")
    assert dialogue[0]["content"] == "Look\nNote: this is text\nhttps://example.com"


def test_malformed_lines_are_all_reported_with_their_numbers() -> None:
    text = "preamble\nuser: fine\nasistant: typo\nuser:\n\n---\nassistant: x\n"
    with pytest.raises(DialogueError) as error:
        parse_dialogues(text, source="d.txt")
    assert [p.line for p in error.value.problems] == [1, 3, 4, 6]
    message = str(error.value)
    assert "d.txt:1: text before the first message" in message
    assert "d.txt:3: unknown role 'asistant' (did you mean 'assistant'?)" in message
    assert "d.txt:4: the user message is empty" in message
    assert "d.txt:6: '---' separates example dialogues" in message


def test_empty_input_has_no_messages() -> None:
    with pytest.raises(DialogueError, match="the input has no messages"):
        parse_dialogues("\n\n")


def test_example_dialogues_are_split_by_separators_and_fit_a_prompt_config() -> None:
    text = "user: a\nassistant: b\n---\nuser: c\nassistant: d\n\\---\n"
    dialogues = parse_dialogues(text, example_dialogues=True)
    assert dialogues == [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d\n---"}],
    ]
    config = PromptConfig.from_dict({"example_dialogues": dialogues})
    assert config.example_dialogues[1][1].content == "d\n---"
    with pytest.raises(DialogueError, match=":1: example dialogues hold user and assistant"):
        parse_dialogues("system: x\nuser: y\n", example_dialogues=True)
    with pytest.raises(DialogueError, match=":3: the dialogue after line 3 has no messages"):
        parse_dialogues("user: a\nassistant: b\n---\n", example_dialogues=True)


def test_the_command_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "d.txt"
    source.write_text("user: hi\nassistant: hello\n---\nuser: bye\nassistant: ciao\n")
    target = tmp_path / "config.json"
    assert main([str(source), str(target), "--as-example-dialogues"]) == 0
    value = json.loads(target.read_text())
    assert len(value["example_dialogues"]) == 2
    assert PromptConfig.from_file(target).example_dialogues[0][0].content == "hi"
    assert "4 messages in 2 dialogues" in capsys.readouterr().err

    plain = tmp_path / "plain.txt"
    plain.write_text("user: hi\nassistant: hello\n")
    assert main([str(plain), "-"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_the_command_reports_malformed_lines_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.txt"
    source.write_text("hello\nuser: ok\n")
    target = tmp_path / "out.json"
    assert main([str(source), str(target)]) == 1
    assert not target.exists()
    err = capsys.readouterr().err
    assert f"{source}:1: text before the first message" in err
    assert "1 malformed line; nothing written" in err
    assert main([str(tmp_path / "missing.txt"), str(target)]) == 1
    assert "cannot read" in capsys.readouterr().err
