"""StreamParser: deltas joined per field equal parse_completion's fields, on any input."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_harmony.harmony_format import (
    RETURN,
    STOP_TOKENS,
    VOCAB_SIZE,
    Message,
    ParsedCompletion,
    StreamDelta,
    StreamParser,
    get_encoding,
    parse_completion,
    render_completion,
)

CORPUS = json.loads(
    (Path(__file__).parent / "test-data" / "malformed_completions.json").read_text(encoding="utf-8")
)


def corpus_tokens(case: dict) -> list[int]:
    tokens = get_encoding().encode(case["completion"], allowed_special="all")
    if case.get("drop_last"):
        tokens = tokens[: -case["drop_last"]]
    return tokens + case.get("extra_ids", [])


def stream(
    tokens: list[int],
) -> tuple[list[list[StreamDelta]], list[StreamDelta], ParsedCompletion]:
    parser = StreamParser()
    per_token = [list(parser.feed(token)) for token in tokens]
    tail = list(parser.flush())
    return per_token, tail, parser.finish()


def up_to_stop(tokens: list[int]) -> list[int]:
    """What a StreamParser keeps: the tokens up to and including the first stop token."""
    stops = [i for i, t in enumerate(tokens) if t in STOP_TOKENS]
    return tokens[: stops[0] + 1] if stops else tokens


def assert_deltas_add_up(deltas: list[StreamDelta], result: ParsedCompletion) -> None:
    joined = {"analysis": "", "commentary": "", "final": ""}
    calls: dict[int, str] = {}
    for delta in deltas:
        assert delta.text
        if delta.field == "tool_call":
            calls[delta.message_index] = calls.get(delta.message_index, "") + delta.text
        elif delta.field is not None:
            joined[delta.field] += delta.text
    assert joined == {
        "analysis": result.analysis,
        "commentary": result.commentary,
        "final": result.final,
    }
    with_text = [c.arguments for c in result.tool_calls if c.arguments]
    assert [calls[i] for i in sorted(calls)] == with_text
    per_message: dict[int, str] = {}
    for delta in deltas:
        per_message[delta.message_index] = per_message.get(delta.message_index, "") + delta.text
        message = result.messages[delta.message_index]
        assert (delta.channel, delta.recipient, delta.role) == (
            message.channel,
            message.recipient,
            message.role,
        )
    assert per_message == {i: m.text for i, m in enumerate(result.messages) if m.text}


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_stream_survives_malformed_completions(case: dict) -> None:
    tokens = corpus_tokens(case)
    per_token, tail, result = stream(tokens)
    assert result == parse_completion(up_to_stop(tokens))
    assert_deltas_add_up([d for ds in per_token for d in ds] + tail, result)


def test_text_streams_token_by_token_with_its_channel() -> None:
    tokens = render_completion(
        [Message.analysis("Let me think about it."), Message.assistant("Paris is big.")]
    )
    per_token, tail, _ = stream(tokens)
    assert tail == []
    seen = [(d.field, d.message_index, d.text) for ds in per_token for d in ds]
    assert len(seen) > 6  # one delta per content token, not one per message
    assert {(f, i) for f, i, _ in seen} == {("analysis", 0), ("final", 1)}
    assert all(len(ds) <= 1 for ds in per_token)


def test_a_tool_call_streams_its_arguments_with_the_recipient() -> None:
    tokens = render_completion([Message.tool_call("functions.get_weather", '{"city": "Paris"}')])
    per_token, _, result = stream(tokens)
    deltas = [d for ds in per_token for d in ds]
    assert {(d.recipient, d.channel, d.field) for d in deltas} == {
        ("functions.get_weather", "commentary", "tool_call")
    }
    assert "".join(d.text for d in deltas) == '{"city": "Paris"}'
    assert result.tool_calls[0].name == "get_weather"


def test_tokens_after_the_stop_token_are_ignored() -> None:
    parser = StreamParser()
    tokens = render_completion([Message.assistant("Hi")])
    for token in tokens:
        parser.feed(token)
    assert parser.stop_token == RETURN
    more = get_encoding().encode(" more")
    assert [parser.feed(t) for t in more] == [(), ()][: len(more)]
    assert parser.tokens == tokens
    assert parser.finish().final == "Hi"
    assert parser.flush() == ()


def test_a_headerless_answer_arrives_when_the_stream_ends() -> None:
    tokens = get_encoding().encode("Sorry, I can't.")
    per_token, tail, result = stream(tokens)
    assert all(ds == [] for ds in per_token)  # still looks like a header while it streams
    assert [(d.field, d.text) for d in tail] == [("final", "Sorry, I can't.")]
    assert result.final == "Sorry, I can't."


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
messages = st.one_of(
    st.builds(Message.analysis, texts),
    st.builds(Message.assistant, texts),
    st.builds(Message.assistant, texts, channel=st.just("commentary")),
)
completions = (
    st.tuples(
        st.lists(messages, max_size=3),
        st.one_of(
            st.none(),
            st.builds(Message.tool_call, st.sampled_from(["functions.f", "python"]), texts),
        ),
    )
    .map(lambda p: p[0] + ([p[1]] if p[1] else []))
    .filter(bool)
)


@settings(max_examples=100, deadline=None)
@given(completions, st.data())
def test_deltas_add_up_to_the_parse_of_valid_and_truncated_completions(messages, data) -> None:
    tokens = render_completion(messages)
    tokens = tokens[: data.draw(st.integers(0, len(tokens)), label="cut")]
    per_token, tail, result = stream(tokens)
    assert result == parse_completion(up_to_stop(tokens))
    assert_deltas_add_up([d for ds in per_token for d in ds] + tail, result)


markup = [200002, 200003, 200005, 200006, 200007, 200008, 200012]
token_ids = st.one_of(
    st.sampled_from(markup),
    st.sampled_from(markup),
    st.sampled_from(
        [17196, 35644, 173781, 12194, 316, 28, 44580]
    ),  # final analysis assistant Hi to = functions
    st.integers(0, 199997),
    st.integers(199998, VOCAB_SIZE + 3),
    st.integers(-3, -1),
    st.sampled_from([9552, 99, 247]),  # the bytes of " 🦙"
)


@settings(max_examples=400, deadline=None)
@given(st.lists(token_ids, max_size=24))
def test_deltas_add_up_on_garbage(tokens: list[int]) -> None:
    per_token, tail, result = stream(tokens)
    assert result == parse_completion(up_to_stop(tokens))
    assert_deltas_add_up([d for ds in per_token for d in ds] + tail, result)


corruptions = st.lists(
    st.tuples(
        st.integers(0, 200),
        st.sampled_from(["insert", "delete", "replace"]),
        st.sampled_from([*markup, 173781, 17196, 316, 28, 9552, 99, -1, 300000]),
    ),
    max_size=4,
)


@settings(max_examples=100, deadline=None)
@given(completions, corruptions)
def test_deltas_add_up_on_corrupted_completions(messages: list[Message], edits) -> None:
    tokens = render_completion(messages)
    for position, edit, token in edits:
        at = position % len(tokens)
        if edit == "insert":
            tokens.insert(at, token)
        elif edit == "replace":
            tokens[at] = token
        elif len(tokens) > 1:
            del tokens[at]
    per_token, tail, result = stream(tokens)
    assert result == parse_completion(up_to_stop(tokens))
    assert_deltas_add_up([d for ds in per_token for d in ds] + tail, result)
