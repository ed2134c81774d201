"""parse_completion: round trips, a corpus of malformed completions, and garbage."""

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_harmony.harmony_format import (
    CALL,
    RETURN,
    STOP_TOKENS,
    VOCAB_SIZE,
    Message,
    ParsedCompletion,
    ParsePath,
    ToolCall,
    get_encoding,
    parse_completion,
    render_completion,
)

CORPUS = json.loads(
    (Path(__file__).parent / "test-data" / "malformed_completions.json").read_text(encoding="utf-8")
)
MARKER = re.compile(r"<\|[a-z_0-9]+\|>")
"""The text of a special token (``<|message|>``, ``<|reserved_200013|>``)."""
STOP_NAMES = {"<|return|>": RETURN, "<|call|>": CALL, None: None}


def corpus_tokens(case: dict) -> list[int]:
    tokens = get_encoding().encode(case["completion"], allowed_special="all")
    if case.get("drop_last"):
        tokens = tokens[: -case["drop_last"]]
    return tokens + case.get("extra_ids", [])


def assert_expected(result: ParsedCompletion, expect: dict) -> None:
    stop = STOP_NAMES[expect.get("stop_token")]
    got = {
        "analysis": result.analysis,
        "commentary": result.commentary,
        "final": result.final,
        "tool_calls": [
            [c.recipient, c.channel, c.constrain, c.arguments] for c in result.tool_calls
        ],
        "stop_token": result.stop_token,
        "truncated": result.truncated,
        "parse_path": result.parse_path,
    }
    want = {
        "analysis": expect.get("analysis", ""),
        "commentary": expect.get("commentary", ""),
        "final": expect.get("final", ""),
        "tool_calls": expect.get("tool_calls", []),
        "stop_token": stop,
        "truncated": expect.get("truncated", stop is None),
        "parse_path": ParsePath(expect["parse_path"]),
    }
    assert got == want, f"raw text: {result.raw_text!r}, errors: {result.errors}"
    if "messages" in expect:
        assert len(result.messages) == expect["messages"]


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_malformed_completions_recover_the_expected_fields(case: dict) -> None:
    tokens = corpus_tokens(case)
    result = parse_completion(tokens)
    assert_expected(result, case["expect"])
    assert result.raw_text.startswith(case["completion"][:10].replace("🦙", ""))


def test_the_wheel_smoke_test_ids_say_hi() -> None:
    tokens = [200005, 17196, 200008, 12194, 200002]
    assert get_encoding().decode_utf8(tokens) == "<|channel|>final<|message|>Hi<|return|>"
    result = parse_completion(tokens)
    assert (result.final, result.stop_token, result.truncated) == ("Hi", RETURN, False)


def test_a_tool_call_splits_its_recipient() -> None:
    call = ToolCall("functions.get_weather", "{}", "commentary", "<|constrain|>json")
    assert (call.namespace, call.name, call.constrain) == ("functions", "get_weather", "json")
    assert (ToolCall("python", "").namespace, ToolCall("python", "").name) == ("python", "python")
    assert ToolCall("browser.search", "", content_type="code").constrain is None
    assert call.to_message() == Message.tool_call("functions.get_weather", "{}")


def test_errors_say_why_the_stricter_parsers_gave_up() -> None:
    tokens = get_encoding().encode("<|channel|><|message|>Hello<|return|>", allowed_special="all")
    result = parse_completion(tokens)
    assert result.parse_path is ParsePath.RAW
    assert [e.split(":")[0] for e in result.errors] == ["strict", "non_strict"]
    assert "channel" in result.errors[0]
    assert parse_completion([*tokens[:-1], RETURN]).errors == result.errors


def test_parsed_messages_feed_the_next_prompt() -> None:
    messages = [Message.analysis("Check."), Message.tool_call("functions.f", '{"x": 1}')]
    result = parse_completion(render_completion(messages))
    assert result.messages == tuple(messages)
    assert [call.to_message() for call in result.tool_calls] == messages[1:]


# -- hypothesis -----------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
plain = st.one_of(
    st.builds(Message.analysis, texts),
    st.builds(Message.assistant, texts),
    st.builds(Message.assistant, texts, channel=st.just("commentary")),
)
calls = st.builds(
    Message.tool_call,
    st.sampled_from(["functions.get_weather", "functions.x-y_z", "browser.search", "python"]),
    texts,
    channel=st.sampled_from(["commentary", "analysis"]),
    constrain=st.sampled_from(["json", None]),
)
completions = (
    st.tuples(st.lists(plain, max_size=4), st.one_of(st.none(), calls))
    .map(lambda parts: parts[0] + ([parts[1]] if parts[1] else []))
    .filter(bool)
)


def fields_of(messages: list[Message]) -> dict[str, str]:
    out = {"analysis": "", "commentary": "", "final": ""}
    for m in messages:
        if m.recipient is None:
            out[m.channel or "final"] += m.text
    return out


@settings(max_examples=200, deadline=None)
@given(completions, st.booleans())
def test_render_then_parse_round_trips(messages: list[Message], strict_first: bool) -> None:
    tokens = render_completion(messages)
    result = parse_completion(tokens, strict_first=strict_first)
    assert result.messages == tuple(messages)
    assert result.parse_path is (ParsePath.STRICT if strict_first else ParsePath.NON_STRICT)
    assert result.stop_token == (CALL if messages[-1].recipient else RETURN)
    assert not result.truncated
    assert {k: getattr(result, k) for k in ("analysis", "commentary", "final")} == fields_of(
        messages
    )
    assert [c.to_message() for c in result.tool_calls] == [m for m in messages if m.recipient]
    assert result.raw_text == get_encoding().decode(tokens)


@settings(max_examples=40, deadline=None)
@given(completions)
def test_every_truncation_recovers_a_prefix_of_each_field(messages: list[Message]) -> None:
    tokens = render_completion(messages)
    full = parse_completion(tokens)
    for cut in range(len(tokens)):
        part = parse_completion(tokens[:cut])
        assert part.truncated
        assert part.stop_token is None
        assert part.parse_path is ParsePath.STRICT, (cut, part.raw_text, part.errors)
        for field in ("analysis", "commentary", "final"):
            assert getattr(full, field).startswith(getattr(part, field)), (
                cut,
                field,
                part.raw_text,
            )
        assert "\ufffd" not in part.final + part.analysis + part.commentary or "\ufffd" in (
            full.final + full.analysis + full.commentary
        )
        for got, want in zip(part.tool_calls, full.tool_calls, strict=False):
            assert got.recipient == want.recipient
            assert want.arguments.startswith(got.arguments)


token_ids = st.one_of(
    st.integers(0, 199997),  # ordinary
    st.integers(199998, VOCAB_SIZE - 1),  # special and reserved
    st.sampled_from([200002, 200003, 200005, 200006, 200007, 200008, 200012]),  # harmony markup
    st.integers(VOCAB_SIZE, 2**40),  # unknown to the tokenizer
    st.integers(-(2**40), -1),
    st.sampled_from([9552, 99, 247, 3348, 122]),  # pieces of multibyte characters
)


def lossy(ids: list[int]) -> str:
    enc = get_encoding()
    return "".join(
        enc.decode([t], errors="surrogateescape") if 0 <= t < VOCAB_SIZE else "\x00" for t in ids
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(token_ids, max_size=30))
def test_garbage_never_raises_and_keeps_the_raw_text(ids: list[int]) -> None:
    result = parse_completion(ids)
    stops = [t for t in ids if t in STOP_TOKENS]
    assert result.stop_token == (stops[0] if stops else None)
    assert result.truncated == (not stops)
    assert isinstance(result.final, str)
    if all(0 <= t < VOCAB_SIZE for t in ids):
        assert result.raw_text == get_encoding().decode(ids)
    else:
        assert result.raw_text.count("\ufffd") >= sum(not 0 <= t < VOCAB_SIZE for t in ids)


header_pieces = st.sampled_from(
    [
        "<|channel|>",
        "<|constrain|>",
        " ",
        "\n",
        "final",
        "analysis",
        "commentary",
        "??",
        " json",
        "code",
        " to=functions.f",
        "to=python",
        "assistant",
        " assistant",
        "user",
        "functions.f",
        "<|start|>",
    ]
)
content_ids = st.lists(
    st.one_of(
        st.integers(0, 199997),
        st.sampled_from([9552, 99, 247, 200003, 200005, 200006, 200008, 199999, 200000]),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(header_pieces, max_size=6), content_ids, st.booleans(), st.booleans())
def test_the_raw_scanner_agrees_with_openai_harmony_where_it_parses(
    header: list[str], content: list[int], headerless: bool, cut_header: bool
) -> None:
    """The fallback reads input with no special token out of place as openai-harmony does, so
    a stream that falls back halfway keeps what it already showed. Where one is out of place,
    openai-harmony prints its text and the scanner never does."""
    import openai_harmony as oh

    from mlx_harmony.harmony_format._scan import Scanner, first_out_of_place

    enc = get_encoding()
    ids = enc.encode(("" if headerless else "<|start|>") + "".join(header), allowed_special="all")
    ids += [RETURN] if cut_header else [200008, *content, 200007]
    role = oh.Role.ASSISTANT if headerless else None
    scanner = Scanner(enc, headerless=headerless)
    for token in ids:
        scanner.feed(token)
    if first_out_of_place(ids, headerless=headerless) is not None:
        for message in scanner.messages:
            assert not MARKER.search(str(message.content)), enc.decode(ids)
        return
    for strict in (True, False):
        try:
            parsed = enc.parse_messages_from_completion_tokens(ids, role, strict=strict)
        except Exception:
            continue
        if parsed:
            assert scanner.messages == [Message.from_harmony(m) for m in parsed], enc.decode(ids)
