"""Sharded generation in lockstep: the control protocol in one process, then two real ranks
on localhost over MLX's ring backend (greedy tokens equal to one process, the start-up check,
and a rank that dies or hangs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony.generate import BatchGenerator, BatchRequest, LoadedModel, StopReason, load_model
from mlx_harmony.generate.distributed import (
    EXIT_RANK_FAILURE,
    DistributedEngine,
    _request_from_message,
    _request_message,
    make_engine,
    run_follower,
)
from mlx_harmony.generate.sharded import (
    FINGERPRINT_PARTS,
    check_same_model,
    load_sharded,
    model_fingerprint,
)
from mlx_harmony.generate.testing import start_ranks, stop_ranks
from mlx_harmony.sampling import SamplingParams

WORKER = Path(__file__).parent / "distributed" / "lockstep_worker.py"
QUESTIONS = (
    "What time is it?",
    "Tell me about the moon.",
    "How do I bake bread?",
    "Why is the sky blue? Answer briefly please.",
)


def _prompts() -> list[list[int]]:
    from mlx_harmony.harmony_format import Message, render_prompt

    return [list(render_prompt([Message.user(q)])) for q in QUESTIONS]


def _drive(engine: BatchGenerator | DistributedEngine, n: int) -> dict[int, list[int]]:
    tokens: dict[int, list[int]] = {}
    ended: set[int] = set()
    for prompt in _prompts():
        tokens[engine.insert(BatchRequest(prompt, max_tokens=n))] = []
    while len(ended) < len(tokens):
        for output in engine.step():
            if output.token is not None:
                tokens[output.uid].append(output.token)
            if output.finish_reason is not None:
                ended.add(output.uid)
    return tokens


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_harmony.demo_model.testing import demo_model_for_tests

    return demo_model_for_tests(tmp_path_factory)


@pytest.fixture(scope="module")
def demo(demo_model: Path) -> LoadedModel:
    return load_model(demo_model)


# -- one process (a group of one rank) -------------------------------------------------------


def test_request_message_round_trip() -> None:
    sampling = SamplingParams(temperature=0.7, top_p=0.9, seed=5, repetition_penalty=1.1)
    request = BatchRequest([1, 2, 3], max_tokens=7, sampling=sampling, stop_tokens={9, 4})
    message = json.loads(json.dumps(_request_message(11, request)))
    back = _request_from_message(message)
    assert (back.uid, list(back.prompt), back.max_tokens) == (11, [1, 2, 3], 7)
    assert back.sampling == sampling
    assert list(back.stop_tokens) == [4, 9]


def test_engine_over_one_rank_equals_plain_engine(tiny: LoadedModel) -> None:
    group = mx.distributed.init()
    assert group.size() == 1
    want = _drive(BatchGenerator(tiny.model, prefill_step_size=64), 12)
    dist = DistributedEngine(make_engine(tiny.model, prefill_step_size=64), group)
    assert _drive(dist, 12) == want
    dist.close()
    with pytest.raises(RuntimeError, match="closed"):
        dist.step()


def test_cancel_is_sent_as_a_removal(tiny: LoadedModel) -> None:
    dist = DistributedEngine(make_engine(tiny.model), mx.distributed.init())
    stop = {"now": False}
    uid = dist.insert(BatchRequest([1, 2, 3, 4], max_tokens=50, cancel=lambda: stop["now"]))
    got: list[int] = []
    reason = None
    while reason is None:
        for output in dist.step():
            if output.token is not None:
                got.append(output.token)
                stop["now"] = len(got) >= 3
            reason = output.finish_reason or reason
    assert reason is StopReason.CANCELLED
    assert len(got) == 4  # noticed before the 4th step, applied on every rank after it
    assert not dist.has_work
    assert dist.engine.stats.cancelled == 1
    assert uid == 0


def test_insert_refuses_callables_and_fixes_seeds(tiny: LoadedModel) -> None:
    dist = DistributedEngine(make_engine(tiny.model), mx.distributed.init())
    with pytest.raises(ValueError, match="logits_processors cannot travel"):
        dist.insert(BatchRequest([1, 2], logits_processors=[lambda t, x: x]))
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        dist.insert(BatchRequest([1, 2], max_tokens=0))
    request = BatchRequest([1, 2], sampling=SamplingParams(temperature=0.8))
    dist.insert(request)
    assert request.sampling is not None
    assert request.sampling.seed is not None
    greedy = BatchRequest([1, 2], sampling=SamplingParams(temperature=0))
    dist.insert(greedy)
    assert greedy.sampling is not None
    assert greedy.sampling.seed is None


def test_rank_roles_are_checked(tiny: LoadedModel) -> None:
    with pytest.raises(ValueError, match="run_follower runs on ranks other than 0"):
        run_follower(make_engine(tiny.model), mx.distributed.init())
    with pytest.raises(ValueError, match="must be positive"):
        DistributedEngine(make_engine(tiny.model), mx.distributed.init(), step_timeout_s=0)


def test_fingerprint_tells_the_parts_apart(tiny: LoadedModel) -> None:
    a = model_fingerprint(tiny, {"max_batch_size": 8})
    b = model_fingerprint(tiny, {"max_batch_size": 4})
    assert list(a) == list(FINGERPRINT_PARTS)
    assert [p for p in FINGERPRINT_PARTS if a[p] != b[p]] == ["options"]
    check_same_model(tiny, {"max_batch_size": 8}, mx.distributed.init())  # one rank: nothing


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_load_sharded_one_rank_is_load_model(tiny_model_dir: Path, tiny: LoadedModel) -> None:
    loaded = load_sharded(tiny_model_dir, mx.distributed.init())
    prompt = mx.array([[5, 6, 7, 8]])
    assert mx.array_equal(loaded.model(prompt), tiny.model(prompt)).item()
    assert loaded.config == tiny.config


# -- two ranks on localhost ------------------------------------------------------------------


def _start_ranks(
    tmp_path: Path,
    model: Path,
    out: Path,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> list[subprocess.Popen[bytes]]:
    """Two ranks of the worker started by hand (what `mlx.launch --backend ring` does), so
    the test owns each rank's pid and exit status."""
    cmd = [sys.executable, str(WORKER), "--model", str(model), "--out", str(out), *extra]
    return start_ranks(lambda _: cmd, tmp_path, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("api", ["engine", "generator"])
def test_two_ranks_equal_one_process(
    tmp_path: Path, demo_model: Path, demo: LoadedModel, api: str
) -> None:
    out = tmp_path / "result.json"
    launcher = Path(sys.executable).parent / "mlx.launch"
    cmd = [str(launcher), "--backend", "ring", "-n", "2", "--", sys.executable, str(WORKER)]
    cmd += ["--model", str(demo_model), "--out", str(out), "--api", api]
    run = subprocess.run(cmd, capture_output=True, timeout=180, text=True)
    assert out.exists(), f"no result; rc {run.returncode}\n{run.stdout}\n{run.stderr}"
    result = json.loads(out.read_text())
    assert result["ranks"] == 2
    assert not result.get("errors")
    got = {int(k): v for k, v in result["tokens"].items()}
    want = _drive(BatchGenerator(demo.model, prefill_step_size=64), 24)

    def text(tokens: list[int]) -> str:
        return repr(demo.tokenizer.decode(tokens))

    assert result["reasons"] == {"0": "cancelled", "1": "length", "2": "length", "3": "length"}
    for uid in (1, 2, 3):
        assert got[uid] == want[uid], f"request {uid}: {text(got[uid])} != {text(want[uid])}"
    # The engine hands out a 6th token (see the cancel test); the generator's stream stops
    # handing out tokens as soon as the caller cancels.
    assert len(got[0]) == (6 if api == "engine" else 5), text(got[0])
    assert got[0] == want[0][: len(got[0])], text(got[0])


@pytest.mark.slow
def test_start_up_check_names_the_rank_that_differs(tmp_path: Path, demo_model: Path) -> None:
    procs = _start_ranks(
        tmp_path, demo_model, tmp_path / "r.json", env={"MLX_HARMONY_TEST_SALT_RANK": "1"}
    )
    try:
        errs = [p.communicate(timeout=120)[1].decode() for p in procs]
    finally:
        stop_ranks(procs)
    assert [p.returncode for p in procs] == [3, 3]
    assert "rank 1 differs from rank 0 in options" in errs[0]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "hang"])
def test_rank_failure_ends_rank_zero(tmp_path: Path, demo_model: Path, how: str) -> None:
    out = tmp_path / "r.json"
    # The step timeout must exceed the slowest healthy step on a busy CI machine.
    timeout = 15
    extra = ["--max-tokens", "100000", "--cancel-after", "100000", "--step-timeout", str(timeout)]
    procs = _start_ranks(tmp_path, demo_model, out, extra)
    try:
        marker = out.with_suffix(".started")
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert time.monotonic() < deadline, "rank 0 never started generating"
            assert procs[0].poll() is None, procs[0].communicate()[1].decode()
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(procs[1].pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        killed = time.monotonic()
        procs[0].wait(timeout + 45)
        took = time.monotonic() - killed
    finally:
        if how == "hang":
            os.kill(procs[1].pid, signal.SIGKILL)
        stop_ranks(procs)
    assert procs[0].returncode == EXIT_RANK_FAILURE
    assert took < (10 if how == "kill" else timeout + 10), took
    failure = json.loads(out.read_text())["failure"]
    assert failure["ended"] == [0, 1, 2, 3]
    assert ("connection to a peer was lost" if how == "kill" else "did not finish in time") in (
        failure["error"]
    )


def _stream_tokens(generator: object, prompt: Sequence[int], n: int) -> list[int]:
    events = generator.stream(  # type: ignore[attr-defined]
        prompt_tokens=prompt, max_tokens=n, stop_tokens=[], loop_detection="off"
    )
    return [e.token for e in events if e.token is not None]


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_sharded_token_generator_over_one_rank(tiny_model_dir: Path) -> None:
    from mlx_harmony.generate import BatchTokenGenerator
    from mlx_harmony.generate.distributed import ShardedBatchTokenGenerator

    # Loaded here, run on the engine threads: load_sharded leaves no lazy array behind.
    tiny = load_sharded(tiny_model_dir, mx.distributed.init())
    prompts = _prompts()
    with BatchTokenGenerator(tiny, prefill_step_size=64) as plain:
        want = [_stream_tokens(plain, p, 10) for p in prompts]
    sharded = ShardedBatchTokenGenerator(tiny, heartbeat_s=0.05, prefill_step_size=64)
    try:
        assert [_stream_tokens(sharded, p, 10) for p in prompts] == want
        sharded.reset_cache()
        time.sleep(0.2)  # a few heartbeats: the clear travels as a control message
        assert len(sharded.prompt_cache) == 0
        again = _stream_tokens(sharded, prompts[0], 10)
        assert again == want[0]
        with pytest.raises(ValueError, match="logits_processors cannot travel"):
            list(sharded.stream(prompt_tokens=prompts[0], logits_processors=[lambda t, x: x]))
    finally:
        sharded.close()
    with pytest.raises(TypeError, match="LoadedModel of load_sharded"):
        ShardedBatchTokenGenerator("some/path")  # type: ignore[arg-type]
