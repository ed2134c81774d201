"""The loop on a tiny random gpt-oss: stop reasons, cancellation, text deltas, stats."""

from __future__ import annotations

import threading

import mlx.core as mx
import pytest

from mlx_harmony.generate import (
    CacheReuseMode,
    LoadedModel,
    StopReason,
    StreamEvent,
    TokenGenerator,
    generate,
    stream_generate,
)

PROMPT = list(range(1000, 1020))
RETURN, CALL, END = 200002, 200012, 200007


@pytest.fixture
def generator(tiny: LoadedModel) -> TokenGenerator:
    return TokenGenerator(tiny)


def _split(events: list[StreamEvent]) -> tuple[list[int], str, StreamEvent]:
    tokens = [e.token for e in events if e.token is not None]
    return tokens, "".join(e.text for e in events), events[-1]


def test_only_the_last_event_carries_the_stop_reason_and_stats(generator: TokenGenerator) -> None:
    events = list(generator.stream(prompt_tokens=PROMPT, max_tokens=4, stop_tokens=()))
    assert len(events) == 4
    assert all(e.stop_reason is None and e.stats is None for e in events[:-1])
    assert events[-1].stop_reason is StopReason.LENGTH
    assert events[-1].stats is generator.last_stats


def test_a_stop_token_ends_the_stream_and_is_reported(
    generator: TokenGenerator, force_tokens
) -> None:
    script = [9906, 11, 2375, RETURN, 500]
    events = list(
        generator.stream(
            prompt_tokens=PROMPT,
            max_tokens=20,
            logits_processors=[force_tokens(script, prompt_len=len(PROMPT))],
        )
    )
    tokens, text, last = _split(events)
    assert tokens == script[:4]
    assert last.token == RETURN
    assert last.text == ""
    assert last.stop_reason is StopReason.STOP
    assert last.stats is not None
    assert last.stats.stop_token == RETURN
    assert last.stats.completion_tokens == 4
    assert text == generator.decode(script[:3])


def test_end_does_not_stop_a_harmony_turn_but_call_does(
    generator: TokenGenerator, force_tokens
) -> None:
    script = [9906, END, 200006, 2375, CALL, 11]
    tokens = list(
        generator.generate(
            prompt_tokens=PROMPT,
            max_tokens=20,
            logits_processors=[force_tokens(script, prompt_len=len(PROMPT))],
        )
    )
    assert tokens == script[:5]
    assert generator.last_stats is not None
    assert generator.last_stats.stop_token == CALL


def test_a_stop_string_spanning_tokens_cuts_the_text(
    generator: TokenGenerator, force_tokens
) -> None:
    script = generator.encode("The answer is forty-two. STOP and nothing else")
    events = list(
        generator.stream(
            prompt_tokens=PROMPT,
            max_tokens=40,
            stop_strings=["two. ST"],
            logits_processors=[force_tokens(script, prompt_len=len(PROMPT))],
        )
    )
    tokens, text, last = _split(events)
    assert text == "The answer is forty-"
    assert last.stop_reason is StopReason.STOP
    assert last.stats is not None
    assert last.stats.stop_string == "two. ST"
    # The stop string spans more than one token, and generation stopped at the one completing it.
    spanning = [t for t in script if any(p in generator.decode([t]) for p in ("two", ".", " ST"))]
    assert len(spanning) >= 2
    assert "two. ST" in generator.decode(tokens)
    assert "two. ST" not in generator.decode(tokens[:-1])


def test_max_tokens_is_length(generator: TokenGenerator) -> None:
    tokens = list(generator.generate(prompt_tokens=PROMPT, max_tokens=5, stop_tokens=()))
    stats = generator.last_stats
    assert len(tokens) == 5
    assert stats is not None
    assert stats.stop_reason is StopReason.LENGTH
    # No step is queued past the limit: the last token is not in the cache.
    assert stats.kv_length == len(PROMPT) + 4


def test_cancel_with_an_event_stops_before_the_next_token(generator: TokenGenerator) -> None:
    cancel = threading.Event()
    seen = []
    for event in generator.stream(
        prompt_tokens=PROMPT, max_tokens=50, stop_tokens=(), cancel=cancel
    ):
        if event.token is not None:
            seen.append(event.token)
        if len(seen) == 3:
            cancel.set()
    assert len(seen) == 3
    assert event.token is None
    assert event.stop_reason is StopReason.CANCELLED
    assert event.stats is not None
    assert event.stats.completion_tokens == 3


def test_cancel_with_a_callback_is_checked_every_token(generator: TokenGenerator) -> None:
    received: list[int] = []
    for token in generator.generate(
        prompt_tokens=PROMPT, max_tokens=50, stop_tokens=(), cancel=lambda: len(received) >= 5
    ):
        received.append(token)
    assert len(received) == 5
    assert generator.last_stats is not None
    assert generator.last_stats.stop_reason is StopReason.CANCELLED
    assert generator.last_stats.completion_tokens == 5


def test_cancel_during_the_prompt_gives_no_token(tiny: LoadedModel) -> None:
    generator = TokenGenerator(tiny, prefill_step_size=4)
    progress: list[int] = []
    cancel = threading.Event()

    def on_progress(done: int, total: int) -> None:
        progress.append(done)
        if done >= 8:
            cancel.set()

    events = list(
        generator.stream(
            prompt_tokens=PROMPT,
            max_tokens=10,
            cancel=cancel,
            prompt_progress_callback=on_progress,
        )
    )
    assert len(events) == 1
    assert events[0].token is None
    assert events[0].stop_reason is StopReason.CANCELLED
    assert progress == [0, 4, 8]
    # The cache keeps what was prefilled, consistently: the next call reuses it.
    assert generator.prompt_cache.tokens == PROMPT[:8]
    list(generator.generate(prompt_tokens=PROMPT, max_tokens=2, stop_tokens=()))
    assert generator.last_stats is not None
    assert generator.last_stats.reused_prompt_tokens == 8


def test_loop_detection_stops_a_forced_loop(tiny: LoadedModel, force_tokens) -> None:
    pattern = [1111, 2222, 3333, 4444, 5555, 6666, 7777]
    loop = force_tokens(pattern, prompt_len=len(PROMPT), cycle=True)
    counts = {}
    for mode in ("off", "cheap", "full"):
        generator = TokenGenerator(tiny, loop_detection=mode)
        tokens = list(
            generator.generate(
                prompt_tokens=PROMPT, max_tokens=90, stop_tokens=(), logits_processors=[loop]
            )
        )
        stats = generator.last_stats
        assert stats is not None
        assert stats.loop_detection == mode
        counts[mode] = len(tokens)
        expected = StopReason.LENGTH if mode == "off" else StopReason.LOOP_DETECTED
        assert stats.stop_reason is expected, mode
    assert counts["off"] == 90
    # full checks every token: it stops as soon as the 48-token span repeats; cheap within 16.
    assert counts["full"] == 48
    assert 48 <= counts["cheap"] < 48 + 16


def test_loop_detection_can_be_chosen_per_call(generator: TokenGenerator, force_tokens) -> None:
    loop = force_tokens([1, 2, 3], prompt_len=len(PROMPT), cycle=True)
    list(
        generator.generate(
            prompt_tokens=PROMPT,
            max_tokens=60,
            stop_tokens=(),
            logits_processors=[loop],
            loop_detection="off",
        )
    )
    assert generator.last_stats is not None
    assert generator.last_stats.stop_reason is StopReason.LENGTH


def test_text_deltas_are_utf8_safe_across_split_characters(
    generator: TokenGenerator, force_tokens
) -> None:
    text = "héllo 🦙 世界 ümlaut — ok 🎉"
    script = generator.encode(text)
    # The emoji really is split: some of its tokens alone are not valid UTF-8.
    assert any("\ufffd" in generator.decode([t]) for t in script)
    events = list(
        generator.stream(
            prompt_tokens=PROMPT,
            max_tokens=len(script),
            stop_tokens=(),
            logits_processors=[force_tokens(script, prompt_len=len(PROMPT))],
        )
    )
    tokens, streamed, _ = _split(events)
    assert tokens == script
    assert streamed == text == generator.decode(tokens)
    assert not any("\ufffd" in e.text for e in events)
    assert any(e.text == "" for e in events[:-1])  # held back while a character was incomplete


def test_stats_describe_the_call(generator: TokenGenerator) -> None:
    generator.reset_cache()
    list(generator.generate(prompt_tokens=PROMPT, max_tokens=8, stop_tokens=()))
    stats = generator.last_stats
    assert stats is not None
    assert stats.prompt_tokens == len(PROMPT)
    assert stats.reused_prompt_tokens == 0
    assert stats.prefilled_tokens == len(PROMPT)
    assert stats.cache_reuse is CacheReuseMode.FRESH
    assert 0 < stats.prefill_s <= stats.time_to_first_token_s
    assert stats.completion_tokens == 8
    assert stats.decode_s > 0
    assert stats.decode_tokens_per_s > 0
    assert stats.decode_tokens_per_s == pytest.approx(7 / stats.decode_s)
    assert stats.peak_memory_gb > 0
    assert stats.kv_length == len(PROMPT) + 7
    assert stats.loop_detection == "cheap"
    data = stats.to_dict()
    assert data["stop_reason"] == "length"
    assert data["cache_reuse"] == "fresh"


def test_greedy_tokens_equal_mlx_lm(tiny: LoadedModel) -> None:
    from mlx_lm.generate import stream_generate as mlx_stream_generate

    prompt = list(range(3000, 3100))
    tokenizer = tiny.tokenizer
    eos = tokenizer.eos_token_ids
    tokenizer.eos_token_ids = set()
    try:
        want = [r.token for r in mlx_stream_generate(tiny.model, tokenizer, prompt, max_tokens=24)]
    finally:
        tokenizer.eos_token_ids = eos
    got = list(
        TokenGenerator(tiny, prefill_step_size=2048).generate(
            prompt_tokens=prompt, max_tokens=24, stop_tokens=()
        )
    )
    assert got == want


def test_chunked_prefill_matches_mlx_lm_chunks(tiny: LoadedModel) -> None:
    from mlx_lm.generate import stream_generate as mlx_stream_generate

    prompt = list(range(5000, 5050))
    tokenizer = tiny.tokenizer
    eos = tokenizer.eos_token_ids
    tokenizer.eos_token_ids = set()
    try:
        want = [
            r.token
            for r in mlx_stream_generate(
                tiny.model, tokenizer, prompt, max_tokens=12, prefill_step_size=16
            )
        ]
    finally:
        tokenizer.eos_token_ids = eos
    got = list(
        TokenGenerator(tiny, prefill_step_size=16).generate(
            prompt_tokens=prompt, max_tokens=12, stop_tokens=()
        )
    )
    assert got == want


def test_logprobs_are_normalized_when_asked(generator: TokenGenerator) -> None:
    events = list(
        generator.stream(prompt_tokens=PROMPT, max_tokens=3, stop_tokens=(), logprobs=True)
    )
    for event in events:
        assert event.logprobs is not None
        assert event.logprobs.ndim == 1
        assert mx.logsumexp(event.logprobs).item() == pytest.approx(0.0, abs=1e-4)
        assert mx.argmax(event.logprobs).item() == event.token
    assert all(e.logprobs is None for e in generator.stream(prompt_tokens=PROMPT, max_tokens=2))


def test_module_level_generate_returns_the_whole_result(tiny: LoadedModel, force_tokens) -> None:
    script = [9906, 11, 2375]
    result = generate(
        tiny.model,
        tiny.tokenizer,
        PROMPT,
        max_tokens=10,
        stop_tokens=[2375],
        logits_processors=[force_tokens(script, prompt_len=len(PROMPT))],
    )
    assert result.tokens == script
    assert result.text == tiny.tokenizer.decode(script[:2])
    assert result.stop_reason is StopReason.STOP
    assert result.stats.completion_tokens == 3


def test_a_text_prompt_is_encoded(tiny: LoadedModel) -> None:
    events = list(
        stream_generate(tiny.model, tiny.tokenizer, "Hello", max_tokens=2, stop_tokens=())
    )
    stats = events[-1].stats
    assert stats is not None
    assert stats.prompt_tokens == len(tiny.tokenizer.encode("Hello"))


def test_bad_arguments_are_refused(generator: TokenGenerator, tiny: LoadedModel) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        list(generator.generate(prompt_tokens=PROMPT, max_tokens=0))
    with pytest.raises(ValueError, match="at least one token"):
        list(generator.generate(prompt_tokens=[], max_tokens=3))
    with pytest.raises(TypeError, match="prompt_tokens must be token ids"):
        list(generator.generate(prompt_tokens="hello", max_tokens=3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cancel"):
        list(generator.generate(prompt_tokens=PROMPT, max_tokens=3, cancel=42))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="need a tokenizer"):
        list(stream_generate(tiny.model, None, PROMPT, max_tokens=2, stop_tokens=()))


def test_a_new_call_closes_the_stream_left_open(generator: TokenGenerator) -> None:
    generator.reset_cache()
    first = generator.stream(prompt_tokens=PROMPT, max_tokens=20, stop_tokens=())
    taken = [next(first).token for _ in range(3)]
    prompt = [*PROMPT, *taken, 4242]
    second = list(generator.generate(prompt_tokens=prompt, max_tokens=2, stop_tokens=()))
    assert len(second) == 2
    stats = generator.last_stats
    assert stats is not None
    # The open stream had fed its three tokens; the new prompt extends exactly that.
    assert stats.cache_reuse is CacheReuseMode.EXTEND
    assert stats.reused_prompt_tokens == len(PROMPT) + 3
    with pytest.raises(StopIteration):
        next(first)


def test_mlock_warns_without_metal(tiny: LoadedModel) -> None:
    if mx.metal.is_available():
        pytest.skip("Metal wires memory")
    import mlx_harmony.generate.generator as module

    module._warned_mlock = False
    with pytest.warns(RuntimeWarning, match="mlock has no effect"):
        TokenGenerator(tiny, mlock=True)
