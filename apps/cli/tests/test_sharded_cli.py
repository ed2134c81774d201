"""The chat and the one-shot command on the demo model sharded over two ranks on 127.0.0.1
(MLX's ring backend): greedy answers equal to one process's, the chat driven through rank 0's
stdin pipe (as `mlx.launch` hands it over) with its log written once, by rank 0; a killed
follower ends rank 0 with status 75. The ranks are started by hand, as ``mlx.launch --backend
ring`` would, so that the test owns each rank's stdin, pid and exit status. Each test runs two
processes on the CPU: run them one at a time."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mlx_harmony.chat_history import ChatLogError, load_chat
from mlx_harmony.cli.generate import run_generate
from mlx_harmony.cli.launch import locate_model, make_backend
from mlx_harmony.cli.testing import ENTER, run_chat
from mlx_harmony.generate.distributed import EXIT_RANK_FAILURE
from mlx_harmony.generate.testing import start_ranks, stop_ranks

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
QUESTIONS = ("What time is it?", "Tell me about the moon.")
STEP_TIMEOUT = 8


@pytest.fixture(scope="session")
def qwen2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random qwen2 (its words are noise): a model type mlx-lm can pipeline."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.qwen2 import Model, ModelArgs

    from mlx_harmony.demo_model.tokenizer import VOCAB_SIZE, write_tokenizer_files

    config = {
        "model_type": "qwen2",
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB_SIZE,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
        "eos_token_id": 199999,
    }
    mx.random.seed(2)
    model = Model(ModelArgs.from_dict(config))
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config))
    write_tokenizer_files(folder, cache_dir=tmp_path_factory.mktemp("tokenizer-cache"))
    return folder


def _generate_two_ranks(folder: Path, argv: Sequence[str]) -> list[tuple[int, str, str]]:
    """Each rank's (status, stdout, stderr)."""
    ranks = start_ranks(lambda _: [str(BIN / "mlx-harmony-generate"), *argv], folder)
    try:
        outs = [p.communicate(timeout=180) for p in ranks]
    finally:
        stop_ranks(ranks)
    return [(p.returncode, o.decode(), e.decode()) for p, (o, e) in zip(ranks, outs, strict=True)]


@pytest.mark.parametrize("question", QUESTIONS)
def test_generate_equals_one_process(tmp_path: Path, demo_model: Path, question: str) -> None:
    argv = ["--model", str(demo_model), "--prompt", question, "--temperature", "0"]
    argv += ["--max-tokens", "200"]
    want = io.StringIO()
    assert run_generate(argv, stdout=want, stderr=io.StringIO()) == 0
    (status0, got, err0), (status1, out1, err1) = _generate_two_ranks(tmp_path, argv)
    assert (status0, status1) == (0, 0), f"{err0}\n{err1}"
    assert got == want.getvalue(), f"{got!r} != {want.getvalue()!r}"
    assert got.strip()
    assert out1 == "", out1  # the follower prints no answer
    assert "rank 1" in err1
    assert "tensor parallel, 2 ranks" in err1


def test_generate_pipeline_equals_one_process(tmp_path: Path, qwen2_model: Path) -> None:
    argv = ["--model", str(qwen2_model), "--prompt", "Hello there", "--temperature", "0"]
    argv += ["--max-tokens", "24", "--loop-detection", "off"]
    want = io.StringIO()
    assert run_generate(argv, stdout=want, stderr=io.StringIO()) == 0
    ranks = _generate_two_ranks(tmp_path, [*argv, "--pipeline"])
    (status0, got, err0), (status1, _, err1) = ranks
    assert (status0, status1) == (0, 0), f"{err0}\n{err1}"
    assert got == want.getvalue(), f"{got!r} != {want.getvalue()!r}"
    assert got.strip()
    assert "pipeline parallel, 2 ranks" in err1


def test_pipeline_is_refused_for_gpt_oss_by_name(tmp_path: Path, demo_model: Path) -> None:
    argv = ["--model", str(demo_model), "--prompt", "Hi", "--pipeline"]
    (status0, out0, err0), (status1, _, err1) = _generate_two_ranks(tmp_path, argv)
    assert (status0, status1) == (1, 1), f"{err0}\n{err1}"
    assert out0 == ""
    assert "has no pipeline parallelism" in err0
    assert "drop --pipeline" in err0
    assert "has no pipeline parallelism" in err1


def test_what_cannot_travel_is_refused_and_releases_the_follower(
    tmp_path: Path, demo_model: Path
) -> None:
    argv = ["--model", str(demo_model), "--prompt", "Hi", "--kv-bits", "8"]
    (status0, _, err0), (status1, _, err1) = _generate_two_ranks(tmp_path, argv)
    assert (status0, status1) == (2, 0), f"{err0}\n{err1}"
    assert "--kv-bits (kv_bits in the prompt config)" in err0
    assert "a model sharded over 2 ranks" in err0
    assert "loading" not in err1  # released before any rank loaded the model
    (status0, _, err0), (status1, _, _) = _generate_two_ranks(tmp_path, argv[:2])
    assert (status0, status1) == (2, 0), err0
    assert "give the prompt with --prompt TEXT: under mlx.launch" in err0


def _answers(chat: Path) -> list[str]:
    try:
        log = load_chat(chat)
    except (ChatLogError, OSError):
        return []
    return [m.content for m in log.messages if m.role == "assistant" and m.channel == "final"]


class _Chat:
    """Two ranks of ``mlx-harmony-chat``; rank 0's stdin is a pipe, as under mlx.launch."""

    def __init__(self, folder: Path, argv: Sequence[str]) -> None:
        self.folder = folder
        self.logs = [folder / "rank0.log", folder / "rank1.log"]

        def files(rank: int) -> dict[str, Any]:
            out = self.logs[rank].open("wb")
            stdin = subprocess.PIPE if rank == 0 else subprocess.DEVNULL
            return {"stdin": stdin, "stdout": out, "stderr": subprocess.STDOUT}

        command = [str(BIN / "mlx-harmony-chat"), *argv]
        self.ranks = start_ranks(lambda _: command, folder, popen=files)

    def log(self, rank: int) -> str:
        return self.logs[rank].read_text(errors="replace")

    def say(self, line: str) -> None:
        stdin = self.ranks[0].stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()

    def wait_for(self, chat: Path, answers: int) -> None:
        deadline = time.monotonic() + 150
        while len(_answers(chat)) < answers:
            for rank, p in enumerate(self.ranks):
                assert p.poll() is None, f"rank {rank} exited {p.returncode}:\n{self.log(rank)}"
            assert time.monotonic() < deadline, f"no answer {answers}:\n{self.log(0)}"
            time.sleep(0.2)


def test_chat_two_turns_equal_one_process(tmp_path: Path, demo_model: Path) -> None:
    alone_chat, sharded_chat = tmp_path / "alone.json", tmp_path / "sharded.json"
    common = ["--model", str(demo_model), "--temperature", "0", "--max-tokens", "200"]

    def real_backend(launch: Any) -> Any:
        return make_backend(launch, locate_model(launch), on_close=lambda _: None)

    keys = ENTER.join(QUESTIONS) + ENTER + "\\quit" + ENTER
    alone = run_chat([*common, "--chat", str(alone_chat)], keys, backend=real_backend)
    assert alone.status == 0, alone.screen
    want = _answers(alone_chat)
    assert len(want) == 2, want
    assert all(want), want

    chat = _Chat(tmp_path, [*common, "--chat", str(sharded_chat)])
    try:
        for n, question in enumerate(QUESTIONS, start=1):
            chat.say(question)
            chat.wait_for(sharded_chat, n)
        assert chat.ranks[0].stdin is not None
        chat.ranks[0].stdin.close()  # the end of input is Ctrl-D: rank 0 quits
        codes = [p.wait(60) for p in chat.ranks]
    finally:
        stop_ranks(chat.ranks)
    assert codes == [0, 0], f"{codes}\n{chat.log(0)}\n{chat.log(1)}"
    assert _answers(sharded_chat) == want
    log = load_chat(sharded_chat)
    assert [m.content for m in log.messages if m.role == "user"] == list(QUESTIONS)
    assert "Chat saved in" in chat.log(0)  # rich wraps the path
    assert "one message per line" in chat.log(0)
    follower = chat.log(1)
    assert "Chat saved" not in follower, follower
    assert want[0] not in follower, follower
    assert "Traceback" not in chat.log(0) + follower


def test_a_killed_follower_ends_rank_zero_with_75(tmp_path: Path, demo_model: Path) -> None:
    chat_file = tmp_path / "chat.json"
    argv = ["--model", str(demo_model), "--temperature", "0", "--chat", str(chat_file)]
    chat = _Chat(tmp_path, [*argv, "--step-timeout", str(STEP_TIMEOUT)])
    try:
        chat.say(QUESTIONS[0])
        chat.wait_for(chat_file, 1)
        chat.ranks[1].kill()  # rank 0 is idle, waiting for input: its heartbeat finds out
        killed = time.monotonic()
        try:
            chat.ranks[0].wait(STEP_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 did not exit:\n{chat.log(0)}")
        took = time.monotonic() - killed
    finally:
        stop_ranks(chat.ranks)
    assert chat.ranks[0].returncode == EXIT_RANK_FAILURE, chat.log(0)
    assert "mlx-harmony-chat: error: the sharded model is lost" in chat.log(0)
    assert took < STEP_TIMEOUT + 5 + 10, took  # a lost peer may hang a step, + grace + slack
