"""Structured outputs on a tiny byte-level tokenizer with Harmony's special tokens: the grammars
accept rendered completions and refuse wrong ones, the mask allows exactly the grammar's next
tokens, and the processor advances per request."""

from __future__ import annotations

import threading

import mlx.core as mx
import numpy as np
import pytest

from mlx_harmony.generate.constrain import (
    Constraint,
    ConstraintError,
    ConstraintSpec,
    FunctionSpec,
    apply_mask,
    clear_constraint_cache,
    compile_constraint,
    make_constraint,
    prepare_tokenizer,
    prepare_tokenizer_in_background,
    tokenizer_view_state,
)

SPECIALS = [
    "<|return|>",
    "<|constrain|>",
    "<|channel|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|call|>",
    "<|endoftext|>",
]
SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "tag": {"enum": ["x", "y"]}},
    "required": ["a", "tag"],
    "additionalProperties": False,
}
WEATHER = FunctionSpec(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = FunctionSpec("get_time", {"type": "object", "properties": {}}, strict=False)


def _byte_tokenizer(specials: list[str] = SPECIALS) -> object:
    """256 byte tokens plus `specials`: built in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[-1])


@pytest.fixture(scope="module")
def tokenizer() -> object:
    """256 byte tokens plus Harmony's special tokens."""
    return _byte_tokenizer()


def _ids(tokenizer: object, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]


def _walk(tokenizer: object, spec: ConstraintSpec, text: str) -> bool:
    """Whether the matcher takes every token of `text` and ends complete."""
    constraint = compile_constraint(spec, tokenizer).new()
    try:
        constraint.advance(_ids(tokenizer, text))
    except RuntimeError:
        return False
    return constraint.is_accepting


ANALYSIS = "<|channel|>analysis<|message|>Let me think.<|end|><|start|>assistant"
FINAL = "<|channel|>final<|message|>"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (f'{ANALYSIS}{FINAL}{{"a": 3, "tag": "x"}}<|return|>', True),
        (f'{ANALYSIS}{ANALYSIS}{FINAL}{{"a": -1, "tag": "y"}}<|return|>', True),
        (f'{ANALYSIS}{FINAL}{{"a":3,"tag":"x"}}<|return|>', False),  # json.dumps's spacing
        (f'{ANALYSIS}{FINAL}{{"tag": "y", "a": 1}}<|return|>', False),  # keys in schema order
        (f'{FINAL}{{"a": 3, "tag": "x"}}<|return|>', True),  # no analysis is fine too
        (f'{ANALYSIS}{FINAL}{{"a": 3, "tag": "z"}}<|return|>', False),  # not in the enum
        (f'{ANALYSIS}{FINAL}{{"a": 3}}<|return|>', False),  # missing required key
        (f'{ANALYSIS}{FINAL}{{"a": 3, "tag": "x"}}<|end|>', False),  # final must <|return|>
        (f"{ANALYSIS}{FINAL}plain text<|return|>", False),
        ('<|channel|>commentary<|message|>hi<|end|><|start|>assistant{FINAL}{"a":1}', False),
    ],
)
def test_harmony_json_schema_grammar(tokenizer: object, text: str, ok: bool) -> None:
    assert _walk(tokenizer, ConstraintSpec("json_schema", schema=SCHEMA), text) is ok


def test_analysis_text_may_spell_special_tokens_without_ending(tokenizer: object) -> None:
    """Only the special token ends a message: text that reads '<|end|>' is still analysis."""
    constraint = compile_constraint(ConstraintSpec("json_object"), tokenizer).new()
    constraint.advance(_ids(tokenizer, "<|channel|>analysis<|message|>"))
    constraint.advance(_ids(tokenizer, "ab <|end|"))
    mask = np.unpackbits(constraint.allowed_mask().view(np.uint8), bitorder="little")
    end, ret = _ids(tokenizer, "<|end|><|return|>")
    assert mask[end] == 1
    assert mask[ret] == 0
    assert all(mask[i] for i in _ids(tokenizer, "any text >|{}\n"))


CALL = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
CALL_RECIPIENT_FIRST = " to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"


@pytest.mark.parametrize(
    ("text", "required_ok", "auto_ok"),
    [
        (f'{ANALYSIS}{CALL}{{"city": "Paris"}}<|call|>', True, True),
        (f'{ANALYSIS}{CALL_RECIPIENT_FIRST}{{"city": "Paris"}}<|call|>', True, True),
        (f'{ANALYSIS}{CALL}{{"town": "Paris"}}<|call|>', False, False),  # strict arguments
        (f"{ANALYSIS}{FINAL}No call needed.<|return|>", False, True),
        (
            f"{ANALYSIS}<|channel|>commentary to=functions.get_time <|constrain|>json"
            "<|message|>not json at all<|call|>",
            False,  # forced: every call's arguments are JSON for its schema
            True,  # auto: get_time is not strict, its arguments are free
        ),
        (
            f"{ANALYSIS}<|channel|>commentary to=functions.unknown <|constrain|>json"
            "<|message|>{}<|call|>",
            False,
            False,
        ),
    ],
)
def test_harmony_tool_grammar(
    tokenizer: object, text: str, required_ok: bool, auto_ok: bool
) -> None:
    required = ConstraintSpec("tool_call", functions=(WEATHER, TIME), required=True)
    auto = ConstraintSpec("tool_call", functions=(WEATHER, TIME), required=False)
    assert _walk(tokenizer, required, text) is required_ok
    assert _walk(tokenizer, auto, text) is auto_ok


@pytest.mark.parametrize(
    ("reasoning", "text", "ok"),
    [
        (("<think>", "</think>"), '<think>hmm {"no"}</think>\n{"a": 1, "tag": "x"}', True),
        (("<think>", "</think>"), '{"a": 1, "tag": "x"}', True),
        (("<think>", "</think>"), '<think>a</think> b</think>{"a": 1, "tag": "x"}', False),
        (None, '<think>hmm</think>{"a": 1, "tag": "x"}', False),
        (None, '{"a": 1, "tag": "y"}', True),
    ],
)
def test_plain_json_grammar_for_other_models(
    tokenizer: object, reasoning: tuple[str, str] | None, text: str, ok: bool
) -> None:
    spec = ConstraintSpec("json_schema", schema=SCHEMA, harmony=False, reasoning=reasoning)
    assert _walk(tokenizer, spec, text) is ok


def test_mask_allows_exactly_the_next_tokens(tokenizer: object) -> None:
    """At the start of a json_schema completion only <|channel|> may come; after the final
    header only '{' (no free whitespace)."""
    constraint = compile_constraint(ConstraintSpec("json_schema", schema=SCHEMA), tokenizer).new()
    allowed = np.flatnonzero(
        np.unpackbits(constraint.allowed_mask().view(np.uint8), bitorder="little")
    )
    assert allowed.tolist() == _ids(tokenizer, "<|channel|>")
    constraint.advance(_ids(tokenizer, FINAL))
    allowed = np.flatnonzero(
        np.unpackbits(constraint.allowed_mask().view(np.uint8), bitorder="little")
    )
    texts = {tokenizer.decode([int(i)]) for i in allowed}  # type: ignore[attr-defined]
    assert texts == {"{"}


def test_apply_mask_sets_disallowed_and_out_of_vocab_to_minus_inf() -> None:
    words = np.zeros((1, 2), dtype=np.uint32)
    words[0, 0] = (1 << 3) | (1 << 31)
    words[0, 1] = 1 << 1  # id 33
    bitmask = words.view(np.int32)  # llguidance's layout
    logits = mx.arange(40, dtype=mx.float32)[None]
    out = np.array(apply_mask(logits, bitmask, vocab_size=34))
    finite = np.flatnonzero(np.isfinite(out[0])).tolist()
    assert finite == [3, 31, 33]
    assert out[0, 33] == 33.0
    # a vocabulary smaller than the bitmask's 64 bits: id 33 is past it
    out = np.array(apply_mask(logits, bitmask, vocab_size=32))
    assert np.flatnonzero(np.isfinite(out[0])).tolist() == [3, 31]


def test_processor_advances_on_the_sampled_tokens_per_request(tokenizer: object) -> None:
    """Two requests, each its own state: greedy picks of the masked logits walk the grammar to
    a complete answer whatever the (random) logits prefer."""
    vocab = len(tokenizer)  # type: ignore[arg-type]
    prompt = mx.array([5, 6, 7])
    outputs = []
    for seed in (0, 1):
        constraint = make_constraint(tokenizer, json_schema=SCHEMA)
        other = make_constraint(tokenizer, json_schema=SCHEMA)  # untouched: its own state
        history = prompt
        key = mx.random.key(seed)
        for _ in range(200):
            key, sub = mx.random.split(key)
            logits = mx.random.normal((1, vocab + 5), key=sub)
            # a bias toward closing so the walk ends: ordinary tokens only
            token = int(mx.argmax(constraint(history, logits), axis=-1).item())
            history = mx.concatenate([history, mx.array([token])])
            if constraint.is_finished or token == _ids(tokenizer, "<|return|>")[0]:
                break
        constraint(history, mx.zeros((1, vocab + 5)))  # consumes the last token
        assert constraint.is_accepting
        assert other.consumed == 0
        text = tokenizer.decode(history[3:].tolist())  # type: ignore[attr-defined]
        outputs.append(text)
    for text in outputs:
        assert text.endswith("<|return|>")
        assert "<|channel|>final<|message|>" in text


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        (ConstraintSpec("json_schema", schema={"not": {"type": "string"}}), "not"),
        (ConstraintSpec("json_schema", schema={"type": "strin"}), "strin"),
        (ConstraintSpec("json_schema", schema={"type": "string", "format": "ipv9"}), "ipv9"),
        (ConstraintSpec("grammar", grammar="start: missing_rule\n"), "missing_rule"),
    ],
)
def test_bad_schema_or_grammar_names_the_keyword(
    tokenizer: object, spec: ConstraintSpec, names: str
) -> None:
    with pytest.raises(ConstraintError, match=names):
        compile_constraint(spec, tokenizer)


def test_bad_specs_are_refused_before_compiling() -> None:
    with pytest.raises(ConstraintError, match="needs a schema"):
        ConstraintSpec("json_schema")
    with pytest.raises(ConstraintError, match="at least one function"):
        ConstraintSpec("tool_call")
    with pytest.raises(ConstraintError, match="for Harmony models"):
        ConstraintSpec("tool_call", functions=(WEATHER,), harmony=False)
    with pytest.raises(ConstraintError, match="mode must be"):
        ConstraintSpec("yaml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="function name"):
        FunctionSpec("has space", {})


def test_compiles_are_cached_by_canonical_schema(tokenizer: object) -> None:
    first = compile_constraint(
        ConstraintSpec("json_schema", schema={"b": 1, "type": "object"}), tokenizer
    )
    again = compile_constraint(
        ConstraintSpec("json_schema", schema={"type": "object", "b": 1}), tokenizer
    )
    assert again is first
    other_mode = compile_constraint(
        ConstraintSpec("json_schema", schema={"type": "object", "b": 1}, harmony=False), tokenizer
    )
    assert other_mode is not first
    a, b = first.new(), first.new()
    assert isinstance(a, Constraint)
    assert a is not b


def test_compile_timeout_is_a_clear_error(
    tokenizer: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from mlx_harmony.generate import constrain
    from mlx_harmony.generate.constrain import ConstraintTimeoutError

    compile_now = constrain._compile

    def slow_compile(*args: object) -> object:
        time.sleep(0.5)  # a grammar that takes long, on any machine
        return compile_now(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(constrain, "_compile", slow_compile)
    spec = ConstraintSpec(
        "json_schema", schema={"type": "string", "pattern": "^(a|b)*c{2,}[0-9]{3}$"}
    )
    with pytest.raises(ConstraintTimeoutError, match="took more than"):
        compile_constraint(spec, tokenizer, timeout_s=0.05)


# -- the tokenizer view, built ahead in the background -----------------------------------------


@pytest.fixture
def no_views() -> None:
    """Views are kept per vocabulary across tokenizer objects: start these tests with none."""
    clear_constraint_cache(tokenizer_views=True)


@pytest.mark.usefixtures("no_views")
def test_the_background_view_is_the_one_requests_use() -> None:
    tok = _byte_tokenizer()
    assert tokenizer_view_state(tok) == "absent"
    future = prepare_tokenizer_in_background(tok)
    assert tokenizer_view_state(tok) in ("building", "ready")
    assert prepare_tokenizer_in_background(tok) is future  # one build per tokenizer
    view = prepare_tokenizer(tok)
    assert view is future.result()
    assert tokenizer_view_state(tok) == "ready"
    assert tokenizer_view_state(tok, harmony=False) == "absent"  # another view: its own build


@pytest.mark.usefixtures("no_views")
def test_a_request_during_the_build_waits_for_it_instead_of_building_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlx_harmony.generate import constrain

    real = constrain._make_view
    release = threading.Event()
    calls: list[int] = []

    def slow(tokenizer: object, harmony: bool) -> object:
        calls.append(1)
        release.wait(10)
        return real(tokenizer, harmony)

    monkeypatch.setattr(constrain, "_make_view", slow)
    tok = _byte_tokenizer()
    future = prepare_tokenizer_in_background(tok)
    got: list[object] = []
    request = threading.Thread(target=lambda: got.append(prepare_tokenizer(tok)))
    request.start()
    request.join(0.2)
    assert request.is_alive()  # waiting on the build, not done, not building its own
    assert tokenizer_view_state(tok) == "building"
    release.set()
    request.join(10)
    assert got == [future.result()]
    assert len(calls) == 1


@pytest.mark.usefixtures("no_views")
def test_a_failed_background_build_is_raised_by_the_first_request() -> None:
    tok = _byte_tokenizer(["<|endoftext|>"])  # no <|return|> / <|call|>: not Harmony
    future = prepare_tokenizer_in_background(tok)
    assert isinstance(future.exception(10), ConstraintError)
    assert tokenizer_view_state(tok) == "absent"
    with pytest.raises(ConstraintError, match="not a Harmony tokenizer"):
        prepare_tokenizer(tok)
    assert tokenizer_view_state(tok, harmony=False) == "absent"
    prepare_tokenizer(tok, harmony=False)  # the plain view works: EOS ends the output
    assert tokenizer_view_state(tok, harmony=False) == "ready"


@pytest.mark.usefixtures("no_views")
def test_a_tokenizer_loaded_again_reuses_the_view_of_the_same_vocabulary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A model loaded again, or another model with the same tokenizer, builds nothing.
    from mlx_harmony.generate import constrain

    real = constrain._make_view
    builds: list[object] = []

    def counted(tokenizer: object, harmony: bool) -> object:
        builds.append(tokenizer)
        return real(tokenizer, harmony)

    monkeypatch.setattr(constrain, "_make_view", counted)
    first, again = _byte_tokenizer(), _byte_tokenizer()
    assert first is not again
    assert prepare_tokenizer(again) is prepare_tokenizer(first)
    assert tokenizer_view_state(again) == "ready"
    other = _byte_tokenizer([*SPECIALS, "<|extra|>"])  # another vocabulary: its own view
    assert tokenizer_view_state(other) == "absent"
    assert prepare_tokenizer(other) is not prepare_tokenizer(first)
    assert builds == [again, other]  # one build per vocabulary


def test_a_prefix_opens_the_answer_in_the_prompt(tokenizer: object) -> None:
    compiled = compile_constraint(ConstraintSpec("json_schema", schema=SCHEMA), tokenizer)
    constraint = compiled.new(prefix=_ids(tokenizer, FINAL))
    assert constraint.consumed == 0  # the prefix is the prompt's, not generated
    constraint.advance(_ids(tokenizer, '{"a": 3, "tag": "x"}<|return|>'))
    assert constraint.is_finished
    with pytest.raises(ConstraintError, match="refuses prefix token"):
        compiled.new(prefix=_ids(tokenizer, "{"))  # JSON before any channel header


def test_clearing_the_views_makes_the_next_use_build_again(tokenizer: object) -> None:
    view = prepare_tokenizer(tokenizer)
    clear_constraint_cache(tokenizer_views=True)
    assert tokenizer_view_state(tokenizer) == "absent"
    assert prepare_tokenizer(tokenizer) is not view
