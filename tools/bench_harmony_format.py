"""Throughput of mlx-harmony-format: rendering, parsing, streaming, incremental rendering.

    uv run python tools/bench_harmony_format.py [--turns 50] [--repeat 5]

Every number is the best of ``--repeat`` runs, measured side by side in this one process, so the
ratios hold on any machine even where the absolute numbers do not.
"""

from __future__ import annotations

import argparse
import codecs
import platform
import time
from collections.abc import Callable

from mlx_harmony.harmony_format import (
    FIRST_SPECIAL,
    DeveloperConfig,
    FunctionTool,
    Message,
    PromptRenderer,
    StreamParser,
    SystemConfig,
    get_encoding,
    parse_completion,
    render_completion,
    render_prompt,
)

WEATHER = FunctionTool(
    "get_weather",
    "Gets the weather for a location.",
    {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"enum": ["c", "f"], "type": "string"},
        },
        "required": ["location"],
    },
)
SYSTEM = SystemConfig(conversation_start_date="2025-06-28")
DEVELOPER = DeveloperConfig("Answer briefly.", (WEATHER,))
SENTENCE = "The quick brown fox jumps over the lazy dog while the model thinks about it. "


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def chat(turns: int) -> list[list[Message]]:
    """The history before each turn of a chat: question, reasoning, answer, repeated."""
    history: list[Message] = []
    prefixes = []
    for turn in range(turns):
        history.append(Message.user(f"Question {turn}: {SENTENCE * 2}"))
        prefixes.append(list(history))
        history.append(Message.analysis(f"Reasoning {turn}: {SENTENCE * 6}"))
        history.append(Message.assistant(f"Answer {turn}: {SENTENCE * 4}"))
    return prefixes


def generator_texts(tokens: list[int]) -> list[str]:
    """Each token's text as a streaming detokenizer hands it out (what ``feed`` may be given)."""
    encoding = get_encoding()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = []
    for token in tokens:
        if token < FIRST_SPECIAL:
            data = encoding.decode([token], errors="surrogateescape").encode(
                "utf-8", "surrogateescape"
            )
            texts.append(decoder.decode(data))
        else:
            texts.append(decoder.decode(b"", final=True) + encoding.decode([token]))
            decoder.reset()
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    get_encoding()  # load the vocabulary outside the timings
    print(f"python {platform.python_version()} on {platform.machine()}, best of {args.repeat}")

    # -- full vs incremental rendering of a chat, turn by turn ---------------------------------
    prefixes = chat(args.turns)
    kwargs = {"system": SYSTEM, "developer": DEVELOPER}
    prompts = [render_prompt(p, **kwargs) for p in prefixes]
    renderer = PromptRenderer()
    assert [renderer.render_prompt(p, **kwargs) for p in prefixes] == prompts

    def full() -> None:
        for prefix in prefixes:
            render_prompt(prefix, **kwargs)

    def incremental() -> None:
        chat_renderer = PromptRenderer()  # a fresh cache: the chat starts from nothing
        for prefix in prefixes:
            chat_renderer.render_prompt(prefix, **kwargs)

    t_full, t_inc = best(full, args.repeat), best(incremental, args.repeat)
    tokens = sum(map(len, prompts))
    print(f"\n{args.turns}-turn chat rendered turn by turn ({tokens} prompt tokens in all):")
    print(f"  render_prompt (openai-harmony, full)  {t_full * 1e3:8.1f} ms")
    print(f"  PromptRenderer (incremental)         {t_inc * 1e3:8.1f} ms")
    print(f"  incremental is {t_full / t_inc:.1f}x faster")

    # -- render throughput ---------------------------------------------------------------------
    last = prefixes[-1]
    n_messages = len(last) + 2
    t_render = best(lambda: render_prompt(last, **kwargs), args.repeat)
    warm = PromptRenderer()
    warm.render_prompt(last, **kwargs)
    t_warm = best(lambda: warm.render_prompt(last, **kwargs), args.repeat)
    print(f"\nrender one {n_messages}-message prompt ({len(prompts[-1])} tokens):")
    print(
        f"  render_prompt           {n_messages / t_render:10.0f} messages/s "
        f"{len(prompts[-1]) / t_render:12.0f} tokens/s"
    )
    print(
        f"  PromptRenderer, cached  {n_messages / t_warm:10.0f} messages/s "
        f"{len(prompts[-1]) / t_warm:12.0f} tokens/s  ({t_render / t_warm:.0f}x)"
    )

    # -- parse and stream throughput -----------------------------------------------------------
    completion = render_completion(
        [Message.analysis(SENTENCE * 20), Message.assistant(SENTENCE * 10)]
    )
    call = render_completion([Message.tool_call("functions.get_weather", '{"location": "Paris"}')])
    batch = [completion] * 20 + [call] * 20
    n_tokens = sum(map(len, batch))

    def parse_all() -> None:
        for tokens in batch:
            parse_completion(tokens)

    def stream_all() -> None:
        for tokens in batch:
            stream = StreamParser()
            for token in tokens:
                stream.feed(token)
            stream.flush()
            stream.finish()

    texts = [generator_texts(tokens) for tokens in batch]

    def feed_decoded() -> None:
        for tokens in batch:
            stream = StreamParser()
            for token in tokens:
                stream.feed(token)

    def feed_given() -> None:
        for tokens, token_texts in zip(batch, texts, strict=True):
            stream = StreamParser()
            for token, text in zip(tokens, token_texts, strict=True):
                stream.feed(token, text)

    t_parse, t_stream = best(parse_all, args.repeat), best(stream_all, args.repeat)
    t_decoded, t_given = best(feed_decoded, args.repeat), best(feed_given, args.repeat)
    print(f"\nparse {len(batch)} completions ({n_tokens} tokens):")
    print(
        f"  parse_completion   {len(batch) / t_parse:8.0f} completions/s "
        f"{n_tokens / t_parse:10.0f} tokens/s"
    )
    print(
        f"  StreamParser       {len(batch) / t_stream:8.0f} completions/s "
        f"{n_tokens / t_stream:10.0f} tokens/s ({t_stream / t_parse:.1f}x parse_completion)"
    )
    print("\nStreamParser.feed per token (no flush or finish):")
    print(f"  feed(token)        {t_decoded / n_tokens * 1e6:8.2f} us (openai-harmony decodes)")
    print(
        f"  feed(token, text)  {t_given / n_tokens * 1e6:8.2f} us (the generator's text; "
        f"{t_decoded / t_given:.1f}x faster)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
