"""StreamParser: deltas joined per field equal parse_completion's fields, on any input."""

import codecs
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mlx_harmony.harmony_format import (
    FIRST_SPECIAL,
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


def generator_texts(tokens: list[int]) -> list[str]:
    """Each token's text as a streaming detokenizer hands it out (mlx-generate's
    ``StreamEvent.text``): UTF-8 split across tokens comes with the token that completes it."""
    encoding = get_encoding()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = []
    for token in tokens:
        if 0 <= token < FIRST_SPECIAL:
            texts.append(
                decoder.decode(
                    encoding.decode([token], errors="surrogateescape").encode(
                        "utf-8", "surrogateescape"
                    )
                )
            )
        else:  # a special token: its marker, after what the decoder held back
            marker = encoding.decode([token]) if 0 <= token < VOCAB_SIZE else "\ufffd"
            texts.append(decoder.decode(b"", final=True) + marker)
            decoder.reset()
    return texts


def stream(
    tokens: list[int], *, with_text: bool = False
) -> tuple[list[list[StreamDelta]], list[StreamDelta], ParsedCompletion]:
    """Feed `tokens`; ``with_text``: with the generator's text for each (no decoding)."""
    parser = StreamParser()
    if with_text:
        texts = generator_texts(tokens)
        per_token = [list(parser.feed(t, text)) for t, text in zip(tokens, texts, strict=True)]
    else:
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


@pytest.mark.parametrize("with_text", [False, True], ids=["decoded", "given"])
@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_stream_survives_malformed_completions(case: dict, with_text: bool) -> None:
    tokens = corpus_tokens(case)
    per_token, tail, result = stream(tokens, with_text=with_text)
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


@pytest.mark.parametrize("with_text", [False, True], ids=["decoded", "given"])
@settings(max_examples=100, deadline=None)
@given(completions, st.data())
def test_deltas_add_up_to_the_parse_of_valid_and_truncated_completions(
    with_text: bool, messages, data
) -> None:
    tokens = render_completion(messages)
    tokens = tokens[: data.draw(st.integers(0, len(tokens)), label="cut")]
    per_token, tail, result = stream(tokens, with_text=with_text)
    assert result == parse_completion(up_to_stop(tokens))
    assert_deltas_add_up([d for ds in per_token for d in ds] + tail, result)


markup = [200002, 200003, 200005, 200006, 200007, 200008, 200012]
MARKER = re.compile(r"<\|[a-z_0-9]+\|>")
"""The text of a special token (``<|message|>``, ``<|reserved_200013|>``)."""

token_ids = st.one_of(
    st.sampled_from(markup),
    st.sampled_from(markup),
    st.sampled_from(  # the rest of the special range: never text
        [FIRST_SPECIAL, 199999, 200000, 200001, 200004, 200009, 200013, VOCAB_SIZE - 1]
    ),
    st.sampled_from(  # header words: final analysis commentary assistant tool user Hi
        [17196, 35644, 12606, 815, 173781, 17952, 1428, 12194]
    ),
    st.sampled_from([316, 935, 28, 44580, 1196, 5701, 220, 198, 216]),  # " to", "=", ".f", "\x1c"
    st.integers(0, FIRST_SPECIAL - 1),
    st.sampled_from([9552, 99, 247]),  # the bytes of " 🦙"
    st.sampled_from([-1, VOCAB_SIZE, 300000]),  # ids the tokenizer does not know
)
token_lists = st.lists(token_ids, max_size=32)


def check_any_tokens(tokens: list[int]) -> None:
    """Never raises; no special-token text in any field; both stream modes add up."""
    whole = parse_completion(up_to_stop(tokens))
    assert parse_completion(tokens).messages == whole.messages
    ordinary = get_encoding().decode([t for t in tokens if 0 <= t < FIRST_SPECIAL])
    if not MARKER.search(ordinary):  # the text itself can spell a marker; then anything goes
        for text in (whole.analysis, whole.commentary, whole.final):
            assert not MARKER.search(text), whole
        for call in whole.tool_calls:
            assert not MARKER.search(call.arguments), whole
    for with_text in (False, True):
        per_token, tail, result = stream(tokens, with_text=with_text)
        assert result == whole, with_text
        assert_deltas_add_up([d for ds in per_token for d in ds] + tail, result)


# Found by hypothesis; kept here so that they do not depend on a local example database.
REGRESSIONS = [
    [216, 200007, 200003],  # "\x1c" is whitespace to Python, not to openai-harmony
    [935, 28, 200008, 87, 200002],  # a bare "to=": no recipient in both parses
    [17196, 316, 28, 200008, 87, 200002],
    [200006, 17952, 200007],  # <|start|>tool<|end|>: a tool without a name
    [200006, 17952, 200002],
    [200005, 17196, 200008, 12194, 200007, 200006, 17952, 200012],
    [200005, 17196, 200008, 12194, 200008, 87, 200002],  # <|message|> inside content
    [200005, 35644, 200008, 12194, 200005, 17196, 200008, 87, 200002],  # <|channel|> inside
    [200005, 17196, 200008, 9552, 200008, 99, 247, 200002],  # a special token cuts a character
    [200005, 12606, 815, 220, 200003, 4108, 220, 87, 200002],  # <|constrain|> in a cut header
    [200007, 199999, 200006, 173781, 200008, 87],  # <|endoftext|> between messages
]


def with_regressions(test: Callable[[list[int]], None]) -> Callable[[list[int]], None]:
    for tokens in REGRESSIONS:
        test = example(tokens)(test)
    return test


@settings(max_examples=300, deadline=None)
@with_regressions
@given(token_lists)
def test_any_token_sequence_parses_and_streams_without_special_text(tokens: list[int]) -> None:
    check_any_tokens(tokens)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@with_regressions
@given(token_lists)
def test_thousands_of_token_sequences_parse_and_stream_without_special_text(
    tokens: list[int],
) -> None:
    check_any_tokens(tokens)


corruptions = st.lists(
    st.tuples(
        st.integers(0, 200),
        st.sampled_from(["insert", "delete", "replace"]),
        st.sampled_from([*markup, 173781, 17196, 316, 28, 9552, 99, -1, 300000]),
    ),
    max_size=4,
)


@pytest.mark.parametrize("with_text", [False, True], ids=["decoded", "given"])
@settings(max_examples=100, deadline=None)
@given(completions, corruptions)
def test_deltas_add_up_on_corrupted_completions(
    with_text: bool, messages: list[Message], edits
) -> None:
    tokens = render_completion(messages)
    for position, edit, token in edits:
        at = position % len(tokens)
        if edit == "insert":
            tokens.insert(at, token)
        elif edit == "replace":
            tokens[at] = token
        elif len(tokens) > 1:
            del tokens[at]
    per_token, tail, result = stream(tokens, with_text=with_text)
    assert result == parse_completion(up_to_stop(tokens))
    assert_deltas_add_up([d for ds in per_token for d in ds] + tail, result)
