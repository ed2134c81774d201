"""The four targets, each answering a `Prompt` conversation and measuring every turn.

- ``local``: our whole in-process stack, the CLI's: the controller's `LocalBackend`
  (`stream_chat_turn`: prompt config, Harmony rendering, parsing, retries) over mlx-generate's
  `TokenGenerator`, whose tokens a thin wrapper times.
- ``server``: ``mlx-harmony-server`` as a subprocess, streamed over HTTP (SSE).
- ``mlx-lm``: ``mlx_lm.stream_generate`` in-process on the tokenizer's chat template; a fresh
  KV cache every turn (no prompt-cache reuse: ``reused_prompt_tokens`` is 0).
- ``mlx-lm-server``: ``mlx_lm server`` as a subprocess, streamed the same way.

In-process targets time tokens (first token, last token); HTTP targets time the chunks they
receive and take counts from the final usage chunk (``stream_options.include_usage``).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from mlx_harmony.harmony_format import (
    CALL,
    CHANNEL,
    END,
    FIRST_SPECIAL,
    MESSAGE,
    RETURN,
    START,
    StreamParser,
)

from .prompts import Prompt
from .records import TARGETS, TurnRecord
from .servers import ServerProcess, free_port, mlx_lm_server_command, our_server_command

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "WARMUP_PROMPT",
    "BenchSettings",
    "HttpTarget",
    "LocalTarget",
    "MlxLmTarget",
    "ModelChoice",
    "Target",
    "count_channel_tokens",
    "final_text",
    "open_target",
    "resolve_model",
]

DEFAULT_MAX_TOKENS = 256
WARMUP_PROMPT = Prompt(
    id="warmup", category="warmup", turns=("Warm-up: say hello in one short sentence.",)
)

# Harmony's special tokens (o200k_harmony), found by name in the tokenizer.
_HARMONY_IDS = {
    "<|start|>": START,
    "<|channel|>": CHANNEL,
    "<|message|>": MESSAGE,
    "<|end|>": END,
    "<|return|>": RETURN,
    "<|call|>": CALL,
}


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """What every target of a run shares."""

    model: str | None = None
    """Model folder or Hugging Face repo id; None: the profile's, else the demo model."""
    prompt_config: str | None = None
    """Our prompt config JSON (local and server targets)."""
    profile: str | None = None
    """A profile name from `profiles` (model and prompt config), like the CLI's --profile."""
    profiles: str | None = None
    max_tokens: int | None = None
    """Every turn's budget; None: the prompt's own, else `DEFAULT_MAX_TOKENS`."""
    temperature: float = 0.0
    retries: str = "cli"
    """``cli``: the chat CLI's retry policy for ``local``; ``none``: no retries."""
    startup_timeout: float = 600.0
    max_concurrency: int | None = None
    """Passed to our server as --max-concurrency when its build has the flag."""
    out: Path = Path(".")
    """Where server logs (and profiles) go."""
    python: str = sys.executable
    server_wrap: tuple[str, ...] = ()
    """Arguments between the interpreter and ``-m`` for server processes (a profiler)."""
    request_timeout: float = 600.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Extra fields for every HTTP request (e.g. ``logit_bias``), server targets only."""

    def budget(self, prompt: Prompt) -> int:
        if self.max_tokens is not None:
            return self.max_tokens
        return prompt.max_tokens or DEFAULT_MAX_TOKENS


class Target(Protocol):
    """What the runner needs from a target."""

    name: str
    concurrent: bool
    """Whether several clients may call `run_conversation` at once."""
    notes: dict[str, Any]

    def run_conversation(
        self,
        prompt: Prompt,
        *,
        max_tokens: int,
        client: int = 0,
        on_turn: Callable[[TurnRecord], None] | None = None,
    ) -> list[TurnRecord]:
        """Every turn of the prompt as one conversation; a failed turn ends it (its record
        has ``error``)."""
        ...


@dataclass(frozen=True)
class ModelChoice:
    """The model a run uses and our prompt config for it."""

    model: str
    """A model folder or a Hugging Face repo id."""
    prompt_config_path: str | None = None
    prompt_config: Any = None
    """A `PromptConfig` (a profile's inline one included), or None for the defaults."""


def resolve_model(settings: BenchSettings) -> ModelChoice:
    """The model and prompt config: the profile's, else --model, else the demo model
    (``MLX_HARMONY_DEMO_MODEL`` or the built one); --prompt-config wins over a profile's."""
    from mlx_harmony.controller import PromptConfig

    given = PromptConfig.from_file(settings.prompt_config) if settings.prompt_config else None
    if settings.profile:
        from mlx_harmony.controller import Profiles

        if not settings.profiles:
            raise ValueError(f"--profile {settings.profile} needs --profiles FILE")
        resolved = Profiles.from_file(settings.profiles).resolve(settings.profile)
        if given is not None:
            return ModelChoice(resolved.model, settings.prompt_config, given)
        path = resolved.prompt_config_path
        return ModelChoice(
            resolved.model, str(path) if path is not None else None, resolved.prompt_config
        )
    if settings.model:
        local = Path(settings.model).expanduser()
        model = str(local.resolve()) if local.exists() else settings.model
        return ModelChoice(model, settings.prompt_config, given)
    env = os.environ.get("MLX_HARMONY_DEMO_MODEL")
    if env:
        return ModelChoice(str(Path(env).expanduser()), settings.prompt_config, given)
    from mlx_harmony.demo_model import ensure_demo_model

    return ModelChoice(str(ensure_demo_model(progress=False)), settings.prompt_config, given)


# -- shared measuring helpers ----------------------------------------------------------------


def _decode_rate(spans: Sequence[tuple[float | None, float | None, int]]) -> float | None:
    """Tokens after the first of each generation over the time between its first and last."""
    tokens = 0
    seconds = 0.0
    for first, last, n in spans:
        if first is not None and last is not None and n >= 2 and last > first:
            tokens += n - 1
            seconds += last - first
    return tokens / seconds if seconds > 0 else None


def _prefill_rate(prompt: int | None, reused: int | None, ttft: float | None) -> float | None:
    if prompt is None or reused is None or ttft is None or ttft <= 0:
        return None
    return max(prompt - reused, 0) / ttft


def _harmony_ids(tokenizer: Any) -> dict[str, int] | None:
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is None:
        return None
    ids: dict[str, int] = {}
    unk = getattr(tokenizer, "unk_token_id", None)
    for name, expected in _HARMONY_IDS.items():
        try:
            value = convert(name)
        except Exception:
            return None
        if not isinstance(value, int) or value < 0 or value == unk or value != expected:
            return None  # not the Harmony vocabulary `StreamParser` reads
        ids[name] = value
    return ids


def count_channel_tokens(
    tokens: Sequence[int],
    texts: Sequence[str] | None = None,
    *,
    channel: str = "analysis",
) -> int:
    """How many tokens of one generation are message content on `channel` (Harmony), as
    harmony-format's `StreamParser` reads them (``texts``: each token's text as the generator
    decoded it, when it kept them).

    A token counts when the parser gives text on `channel` for it; an ordinary token that gave
    no text yet (content the parser holds back, such as part of a character) counts with the
    next one that does, while a header word (``analysis`` in ``<|channel|>analysis``) is
    dropped at the special token that follows it."""
    if texts is not None and len(texts) != len(tokens):
        raise ValueError(f"got {len(texts)} texts for {len(tokens)} tokens")
    parser = StreamParser()
    count = waiting = 0
    for i, token in enumerate(tokens):
        deltas = parser.feed(token, None if texts is None else texts[i])
        special = token >= FIRST_SPECIAL
        if deltas:
            if any(d.channel == channel for d in deltas):
                count += waiting + (0 if special else 1)
            waiting = 0
        elif special:
            waiting = 0
        else:
            waiting += 1
    return count


def final_text(text: str) -> str:
    """The final answer in a raw Harmony completion (what a chat template shows back as the
    assistant's message); text with no Harmony markup is returned stripped."""
    marker = "<|channel|>final<|message|>"
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    for stop in ("<|return|>", "<|end|>", "<|call|>"):
        text = text.split(stop, 1)[0]
    return text.strip()


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def run_turns(
    name: str,
    prompt: Prompt,
    *,
    client: int,
    on_turn: Callable[[TurnRecord], None] | None,
    turn: Callable[[str, TurnRecord, float], TurnRecord],
    explain: Callable[[Exception], Exception] | None = None,
) -> list[TurnRecord]:
    """Run `prompt`'s turns as one conversation: ``turn(text, base, t0)`` measures one (the
    target keeps the conversation between calls); a turn that raises becomes an error record
    (``explain`` may reword the error) and ends the conversation."""
    records = []
    for index, text in enumerate(prompt.turns):
        base = TurnRecord(
            prompt_id=prompt.id, turn=index, target=name, category=prompt.category, client=client
        )
        t0 = time.perf_counter()
        try:
            record = turn(text, base, t0)
        except Exception as error:
            if explain is not None:
                error = explain(error)
            record = _updated(base, error=_error_text(error), wall_s=time.perf_counter() - t0)
        records.append(record)
        if on_turn is not None:
            on_turn(record)
        if record.error is not None:
            break
    return records


def _free_mlx() -> None:
    gc.collect()
    try:
        import mlx.core as mx

        mx.clear_cache()
    except Exception:
        pass


# -- local: our in-process stack ---------------------------------------------------------------


class _TokenTap:
    """Wraps a `TokenGenerator`: times each generation's first and last token and keeps the
    token ids, for one turn at a time (`reset`)."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.tokens: list[int] = []
        self.spans: list[tuple[float | None, float | None, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)

    def reset(self) -> None:
        self.tokens = []
        self.spans = []

    def stream(self, **kwargs: Any) -> Iterator[Any]:
        first: float | None = None
        last: float | None = None
        n = 0
        tokens = self.tokens
        clock = time.perf_counter
        try:
            for event in self.generator.stream(**kwargs):
                if event.token is not None:
                    last = clock()
                    if first is None:
                        first = last
                    n += 1
                    tokens.append(event.token)
                yield event
        finally:
            self.spans.append((first, last, n))


@dataclass
class LocalTarget:
    """``local``: `LocalBackend` over `TokenGenerator`, honouring the prompt config."""

    model: str
    prompt_config: Any = None
    """A `PromptConfig`, a JSON file's path, or None for the defaults."""
    temperature: float = 0.0
    retries: str = "cli"
    name: str = "local"
    concurrent: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from mlx_harmony.controller import (
            DEFAULT_RETRY_POLICY,
            LocalBackend,
            PromptConfig,
            RetryPolicy,
            adapter_for,
            context_length_of,
        )
        from mlx_harmony.generate import TokenGenerator

        if self.retries not in ("cli", "none"):
            raise ValueError(f"retries must be 'cli' or 'none', got {self.retries!r}")
        if self.prompt_config is None:
            self.config = PromptConfig()
        elif isinstance(self.prompt_config, PromptConfig):
            self.config = self.prompt_config
        else:
            self.config = PromptConfig.from_file(self.prompt_config)
        cfg = self.config.effective()
        self.generator = TokenGenerator(self.model, self.config.generator_options())
        self.tap = _TokenTap(self.generator)
        policy = DEFAULT_RETRY_POLICY if self.retries == "cli" else RetryPolicy(max_retries=0)
        self.backend = LocalBackend(
            self.tap,  # type: ignore[arg-type]
            adapter=adapter_for(self.generator),
            policy=policy,
            context_length=context_length_of(self.generator),
        )
        self.harmony = _harmony_ids(self.generator.tokenizer) if self.generator.is_harmony else None
        self.notes = {
            "retry_policy": self.retries,
            "loop_detection": str(cfg.loop_detection),
            "prompt_config": (
                self.prompt_config if isinstance(self.prompt_config, str | Path) else None
            ),
        }

    def run_conversation(
        self,
        prompt: Prompt,
        *,
        max_tokens: int,
        client: int = 0,
        on_turn: Callable[[TurnRecord], None] | None = None,
    ) -> list[TurnRecord]:
        import mlx.core as mx

        from mlx_harmony.controller import ChatRequest, Turn, TurnDone
        from mlx_harmony.harmony_format import Message

        config = self.config.updated(max_tokens=max_tokens, temperature=self.temperature)
        history: tuple[Any, ...] = ()

        def turn(text: str, base: TurnRecord, t0: float) -> TurnRecord:
            nonlocal history
            self.tap.reset()
            mx.reset_peak_memory()
            result = None
            request = ChatRequest(Turn(Message.user(text)), history=history, config=config)
            for event in self.backend.stream_turn(request):
                if isinstance(event, TurnDone):
                    result = event.result
            wall = time.perf_counter() - t0
            if result is None:
                raise RuntimeError("the turn ended without a result")
            history = (*history, result.turn)
            return self._record(base, result, t0, wall, mx.get_peak_memory() / 1e9)

        return run_turns(self.name, prompt, client=client, on_turn=on_turn, turn=turn)

    def _record(
        self, base: TurnRecord, result: Any, t0: float, wall: float, peak_gb: float
    ) -> TurnRecord:
        generations = result.generations
        prompt_tokens = sum(g.prompt_tokens for g in generations) if generations else None
        reused = sum(g.reused_prompt_tokens for g in generations) if generations else None
        spans = self.tap.spans
        first = next((s[0] for s in spans if s[0] is not None), None)
        ttft = first - t0 if first is not None else None
        reasoning = None
        if self.harmony is not None:
            tokens, reasoning, at = self.tap.tokens, 0, 0
            for _first, _last, n in spans:  # one parser per generation of the turn
                reasoning += count_channel_tokens(tokens[at : at + n])
                at += n
        return _updated(
            base,
            prompt_tokens=prompt_tokens,
            reused_prompt_tokens=reused,
            context_tokens=generations[0].prompt_tokens if generations else None,
            ttft_s=ttft,
            prefill_tokens_per_s=_prefill_rate(
                generations[0].prompt_tokens if generations else None,
                generations[0].reused_prompt_tokens if generations else None,
                ttft,
            ),
            decode_tokens_per_s=_decode_rate(spans),
            completion_tokens=result.completion_tokens,
            reasoning_tokens=reasoning,
            stop_reason=result.finish_reason.value,
            retries=len(result.retries),
            peak_memory_gb=peak_gb,
            wall_s=wall,
        )

    def close(self) -> None:
        close = getattr(self.generator, "close", None)
        if close is not None:
            close()
        del self.backend, self.tap, self.generator
        _free_mlx()


def _updated(record: TurnRecord, **changes: Any) -> TurnRecord:
    return record.model_copy(update=changes)


# -- mlx-lm in-process ---------------------------------------------------------------------------


@dataclass
class MlxLmTarget:
    """``mlx-lm``: `mlx_lm.stream_generate` on the tokenizer's chat template, greedy unless
    `temperature` says otherwise."""

    model: str
    temperature: float = 0.0
    name: str = "mlx-lm"
    concurrent: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from mlx_lm import load
        from mlx_lm.sample_utils import make_sampler

        loaded = load(self.model)  # (model, tokenizer): mlx-lm types the return_config form too
        self.lm_model, self.tokenizer = loaded[0], loaded[1]
        self.sampler = make_sampler(temp=self.temperature)
        self.harmony = _harmony_ids(self.tokenizer)
        self.notes = {"prompt": "the tokenizer's chat template", "prompt_cache": "none"}

    def run_conversation(
        self,
        prompt: Prompt,
        *,
        max_tokens: int,
        client: int = 0,
        on_turn: Callable[[TurnRecord], None] | None = None,
    ) -> list[TurnRecord]:
        import mlx.core as mx
        from mlx_lm import stream_generate

        messages: list[dict[str, str]] = []

        def turn(text: str, base: TurnRecord, t0: float) -> TurnRecord:
            messages.append({"role": "user", "content": text})
            mx.reset_peak_memory()
            tokens = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            first: float | None = None
            last: float | None = None
            generated: list[int] = []
            pieces: list[str] = []
            response = None
            clock = time.perf_counter
            for response in stream_generate(
                self.lm_model,
                self.tokenizer,
                tokens,
                max_tokens=max_tokens,
                sampler=self.sampler,
            ):
                last = clock()
                if first is None:
                    first = last
                generated.append(response.token)
                pieces.append(response.text)
            wall = time.perf_counter() - t0
            ttft = first - t0 if first is not None else None
            reasoning = None
            if self.harmony is not None:
                reasoning = count_channel_tokens(generated, pieces)
            record = _updated(
                base,
                prompt_tokens=len(tokens),
                reused_prompt_tokens=0,
                context_tokens=len(tokens),
                ttft_s=ttft,
                prefill_tokens_per_s=_prefill_rate(len(tokens), 0, ttft),
                decode_tokens_per_s=_decode_rate([(first, last, len(generated))]),
                completion_tokens=len(generated),
                reasoning_tokens=reasoning,
                stop_reason=response.finish_reason if response is not None else None,
                retries=0,
                peak_memory_gb=mx.get_peak_memory() / 1e9,
                wall_s=wall,
            )
            messages.append({"role": "assistant", "content": final_text("".join(pieces))})
            return record

        return run_turns(self.name, prompt, client=client, on_turn=on_turn, turn=turn)

    def close(self) -> None:
        del self.lm_model, self.tokenizer
        _free_mlx()


# -- servers over HTTP ---------------------------------------------------------------------------


@dataclass
class HttpTarget:
    """A server's ``/v1/chat/completions``, streamed; several clients may call at once."""

    name: str
    base_url: str
    temperature: float = 0.0
    server: ServerProcess | None = None
    request_timeout: float = 600.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    concurrent: bool = True
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                base_url=self.base_url, timeout=httpx.Timeout(self.request_timeout, connect=10)
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def run_conversation(
        self,
        prompt: Prompt,
        *,
        max_tokens: int,
        client: int = 0,
        on_turn: Callable[[TurnRecord], None] | None = None,
    ) -> list[TurnRecord]:
        messages: list[dict[str, str]] = []

        def turn(text: str, base: TurnRecord, t0: float) -> TurnRecord:
            messages.append({"role": "user", "content": text})
            body = {
                "model": "default_model",
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": self.temperature,
                "stream": True,
                "stream_options": {"include_usage": True},
                **self.extra_body,
            }
            record, answer = self._stream(base, body, t0)
            messages.append({"role": "assistant", "content": final_text(answer)})
            return record

        def explain(error: Exception) -> Exception:
            if self.server is not None and not self.server.alive():
                return RuntimeError(
                    f"{self.server.name} died during the run ({error}); see {self.server.log_path}"
                )
            return error

        return run_turns(
            self.name, prompt, client=client, on_turn=on_turn, turn=turn, explain=explain
        )

    def _stream(self, base: TurnRecord, body: dict[str, Any], t0: float) -> tuple[TurnRecord, str]:
        first: float | None = None
        last: float | None = None
        usage: dict[str, Any] | None = None
        finish: str | None = None
        answer: list[str] = []
        clock = time.perf_counter
        with self._client().stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                detail = response.read().decode("utf-8", "replace")[:500]
                raise RuntimeError(f"HTTP {response.status_code}: {detail}")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"error in the stream: {chunk['error']}")
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    if (
                        content
                        or delta.get("reasoning")
                        or delta.get("reasoning_content")
                        or delta.get("tool_calls")
                    ):
                        last = clock()
                        if first is None:
                            first = last
                    if content:
                        answer.append(content)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        wall = clock() - t0
        usage = usage or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        reused = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        ttft = first - t0 if first is not None else None
        record = _updated(
            base,
            prompt_tokens=prompt_tokens,
            reused_prompt_tokens=reused,
            context_tokens=prompt_tokens,
            ttft_s=ttft,
            prefill_tokens_per_s=_prefill_rate(prompt_tokens, reused, ttft),
            decode_tokens_per_s=(
                _decode_rate([(first, last, completion)]) if completion is not None else None
            ),
            completion_tokens=completion,
            reasoning_tokens=reasoning,
            stop_reason=finish,
            process_peak_rss_gb=self.server.peak_rss_gb() if self.server is not None else None,
            wall_s=wall,
        )
        return record, "".join(answer)

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()


# -- opening a target ----------------------------------------------------------------------------


def _health_loaded(response: httpx.Response) -> bool:
    try:
        return bool(response.json().get("model_loaded", True))
    except ValueError:
        return True


@contextmanager
def open_target(
    name: str, settings: BenchSettings, *, log_name: str | None = None
) -> Iterator[Target]:
    """A ready target; servers are started here and always stopped on leaving."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    choice = resolve_model(settings)
    model, prompt_config = choice.model, choice.prompt_config_path
    if name == "local":
        target: Any = LocalTarget(
            model,
            prompt_config=choice.prompt_config,
            temperature=settings.temperature,
            retries=settings.retries,
        )
        try:
            yield target
        finally:
            target.close()
        return
    if name == "mlx-lm":
        target = MlxLmTarget(model, temperature=settings.temperature)
        try:
            yield target
        finally:
            target.close()
        return
    port = free_port()
    log = settings.out / (log_name or f"{name}.log")
    if name == "server":
        command, notes = our_server_command(
            model,
            port=port,
            python=settings.python,
            prompt_config=prompt_config,
            profile=settings.profile,
            profiles=settings.profiles,
            max_concurrency=settings.max_concurrency,
            wrap=settings.server_wrap,
        )
        server = ServerProcess(
            command,
            port=port,
            name="mlx-harmony-server",
            ready_path="/v1/health",
            ready_check=_health_loaded,
            log_path=log,
            startup_timeout=settings.startup_timeout,
        )
    else:
        command = mlx_lm_server_command(
            model, port=port, python=settings.python, wrap=settings.server_wrap
        )
        notes = {}
        server = ServerProcess(
            command,
            port=port,
            name="mlx_lm.server",
            ready_path="/health",
            log_path=log,
            startup_timeout=settings.startup_timeout,
        )
    with server:
        target = HttpTarget(
            name,
            server.base_url,
            temperature=settings.temperature,
            server=server,
            request_timeout=settings.request_timeout,
            extra_body=dict(settings.extra_body),
            notes={**notes, "command": command, "log": str(log), "startup_s": server.started_s},
        )
        try:
            yield target
        finally:
            target.close()
