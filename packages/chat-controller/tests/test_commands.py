import pytest

from mlx_harmony.controller import (
    COMMANDS,
    Command,
    CommandAction,
    PromptConfig,
    SessionState,
    Turn,
    apply_command,
    complete_command,
    parse_command,
)
from mlx_harmony.harmony_format import Message


def run(state: SessionState, line: str):
    command = parse_command(line)
    assert command is not None, line
    return apply_command(state, command)


@pytest.fixture
def chatted() -> SessionState:
    state = SessionState(PromptConfig())
    state = state.with_user_message(Message.user("hi")).with_replies(Message.assistant("hello!"))
    return state.with_user_message(Message.user("how are you?")).with_replies(
        Message.assistant("thinking"), Message.assistant("fine")
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("\\quit", Command("quit")),
        ("  \\SET temperature   0.7  ", Command("set", "temperature   0.7")),
        (
            "\\set developer_instructions Be brief.\nReally.",
            Command("set", "developer_instructions Be brief.\nReally."),
        ),
        ("\\bogus arg", Command("bogus", "arg")),
        ("hello", None),
        ("\\frac{1}{2} is a half", None),
        ("\\\\quit is a command", None),
        ("", None),
    ],
)
def test_parse_command(line: str, expected: Command | None) -> None:
    assert parse_command(line) == expected


def test_set_validates_and_changes_only_that_key() -> None:
    state = SessionState(PromptConfig(top_k=5))
    result = run(state, "\\set temperature 2.5")
    assert not result.error
    assert result.message == "temperature = 2.5"
    assert result.changed == ("temperature",)
    assert result.state.config.setting("temperature") == 2.5
    assert result.state.config.setting("top_k") == 5
    assert state.config.setting("temperature") is None  # the old state is untouched


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("\\set top_p 0", "top_p must be in (0, 1], got 0.0"),
        ("\\set tempreature 1", "Did you mean temperature?"),
        ("\\set temperature warm", "temperature: Input should be a valid number"),
        ("\\set max_tokens -5", "max_tokens: Input should be greater than or equal to 1"),
        ("\\set", "usage: \\set NAME VALUE"),
        ("\\set temperature", "temperature is now 1.0 (default)"),
    ],
)
def test_set_errors(line: str, fragment: str) -> None:
    state = SessionState()
    result = run(state, line)
    assert result.error
    assert fragment in result.message
    assert result.state is state


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ('\\set logit_bias {"12": -5}', "logit_bias", {12: -5.0}),
        ("\\set performance_mode on", "performance_mode", True),
        ("\\set seed null", "seed", None),
        ("\\set knowledge_cutoff 2025", "knowledge_cutoff", "2025"),
        (
            "\\set developer_instructions Answer in {lang}.",
            "developer_instructions",
            "Answer in {lang}.",
        ),
        ('\\set end_token_strings ["END"]', "end_token_strings", ["END"]),
    ],
)
def test_set_parses_json_then_falls_back_to_text(line: str, name: str, value: object) -> None:
    start = SessionState(PromptConfig(seed=3))
    result = run(start, line)
    assert not result.error, result.message
    assert result.state.config.setting(name) == value


def test_set_to_the_same_value_changes_nothing() -> None:
    state = SessionState(PromptConfig(temperature=0.5))
    result = run(state, "\\set temperature 0.5")
    assert (result.state, result.changed, result.error) == (state, (), False)
    assert "already" in result.message


def test_set_mentions_a_performance_override() -> None:
    state = SessionState(PromptConfig(performance_mode=True, perf_max_tokens=100))
    result = run(state, "\\set max_tokens 900")
    assert result.message == "max_tokens = 900 (performance mode uses perf_max_tokens = 100)"


def test_reasoning() -> None:
    state = SessionState()
    result = run(state, "\\reasoning HIGH")
    assert result.state.config.reasoning_effort == "high"
    assert result.changed == ("reasoning_effort",)
    bad = run(state, "\\reasoning extreme")
    assert bad.error
    assert "low, medium, high" in bad.message
    assert "reasoning_effort is medium" in run(state, "\\reasoning").message


def test_show_lists_effective_values() -> None:
    state = SessionState(PromptConfig(performance_mode=True, max_tokens=10, perf_max_tokens=3))
    text = run(state, "\\show").message
    lines = text.splitlines()
    assert lines[0].startswith("(performance mode")
    assert any(line.split() == ["max_tokens", "=", "3"] for line in lines)
    assert any(line.split() == ["top_p", "=", "1.0", "(default)"] for line in lines)
    assert run(state, "\\show max_tokens").message == "max_tokens = 3"
    assert "Did you mean top_k?" in run(state, "\\show top_kk").message


def test_undo_drops_the_last_turn(chatted: SessionState) -> None:
    result = run(chatted, "\\undo")
    assert result.state.turns == (Turn(Message.user("hi"), (Message.assistant("hello!"),)),)
    empty = run(SessionState(), "\\undo")
    assert empty.error
    assert "Nothing to undo" in empty.message


def test_retry_keeps_the_user_message_and_asks_for_a_new_reply(chatted: SessionState) -> None:
    result = run(chatted, "\\retry")
    assert result.action is CommandAction.RETRY
    assert result.state.turns[-1] == Turn(Message.user("how are you?"))
    assert result.state.turns[0] == chatted.turns[0]
    assert run(SessionState(), "\\retry").error


def test_clear_keeps_the_settings(chatted: SessionState) -> None:
    state = SessionState(PromptConfig(temperature=0.1), chatted.turns)
    result = run(state, "\\clear")
    assert result.state.turns == ()
    assert result.state.config is state.config


@pytest.mark.parametrize(
    ("line", "action", "path"),
    [
        ("\\save", CommandAction.SAVE, None),
        ("\\save chats/my chat.json", CommandAction.SAVE, "chats/my chat.json"),
        ("\\load old.json", CommandAction.LOAD, "old.json"),
        ("\\tokens", CommandAction.TOKENS, None),
        ("\\quit", CommandAction.QUIT, None),
        ("\\exit", CommandAction.QUIT, None),
    ],
)
def test_io_commands_return_actions(
    chatted: SessionState, line: str, action: CommandAction, path: str | None
) -> None:
    result = run(chatted, line)
    assert (result.action, result.path, result.error) == (action, path, False)
    assert result.state is chatted


def test_argument_mistakes() -> None:
    state = SessionState()
    assert "usage: \\load PATH" in run(state, "\\load").message
    assert "\\clear takes no argument" in run(state, "\\clear everything").message


def test_unknown_command_lists_the_valid_ones() -> None:
    result = run(SessionState(), "\\sow")
    assert result.error
    assert "Unknown command \\sow. Did you mean \\show?" in result.message
    for name in COMMANDS:
        assert f"\\{name}" in result.message
    nothing_close = run(SessionState(), "\\xyzzy").message
    assert "Did you mean" not in nothing_close
    assert "\\help" in nothing_close


def test_help_lists_every_command_and_explains_one() -> None:
    text = run(SessionState(), "\\help").message
    for spec in COMMANDS.values():
        assert spec.usage in text
        assert spec.help in text
    assert (
        run(SessionState(), "\\help \\undo").message
        == f"{COMMANDS['undo'].usage}\n  {COMMANDS['undo'].help}"
    )


def test_completions() -> None:
    assert complete_command("\\re") == ["\\reasoning", "\\retry"]
    assert complete_command("\\set max_to") == ["max_tokens"]
    assert complete_command("\\reasoning m") == ["medium"]
    assert complete_command("\\help cl") == ["clear"]
    assert complete_command("\\set temperature 1") == []
    assert complete_command("plain text") == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("q", Command("quit")),
        ("  Quit ", Command("quit")),
        ("exit", Command("quit")),
        ("q and a", None),
        ("/help", Command("help")),
        ("/set temperature 0.7", Command("set", "temperature 0.7")),
        ("/list", Command("list")),
        ("/etc is a folder", None),
        ("/usr/bin/env", None),
        ("//help is a message", None),
        ("\\models", Command("models")),
    ],
)
def test_habits_of_mlx_harmony_0_4(line: str, expected: Command | None) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    "line", ["\\set temperature=0.7", "/set temperature = 0.7", "\\set temperature 0.7"]
)
def test_set_takes_name_equals_value(line: str) -> None:
    result = run(SessionState(), line)
    assert not result.error, result.message
    assert result.state.config.sampling.temperature == 0.7
    assert result.changed == ("temperature",)


def test_set_with_an_equals_sign_inside_the_value_keeps_it() -> None:
    result = run(SessionState(), '\\set end_token_strings ["a=b"]')
    assert result.state.config.end_token_strings == ["a=b"]
    text = run(SessionState(), "\\set developer_instructions=Say x=1.").state.config
    assert text.developer_instructions == "Say x=1."


@pytest.mark.parametrize("line", ["\\models", "\\list", "/models", "/list"])
def test_models_and_list_ask_the_front_end(line: str) -> None:
    result = run(SessionState(), line)
    assert (result.action, result.error) == (CommandAction.MODELS, False)


def test_slash_completions() -> None:
    assert complete_command("/re") == ["/reasoning", "/retry"]
