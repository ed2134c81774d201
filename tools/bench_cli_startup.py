"""Benchmark: `mlx-harmony-chat` start-up, to the first prompt and to the model being ready.

    uv run python tools/bench_cli_startup.py             # median of 5 runs
    uv run python tools/bench_cli_startup.py --repeat 9 --model PATH

Target: the first prompt shows in under 3 s with the demo model already built. The chat runs
in a pseudo-terminal (so prompt-toolkit draws its real prompt; the script answers its cursor
position queries as a terminal does) and is timed from ``exec`` to:

- **first prompt**: the prompt and its toolbar are on the screen; the user can type. The model
  still loads on the chat's worker thread.
- **model ready**: the toolbar shows the context count, which the worker reports once the
  model is loaded.
- **first answer** (``--ask``): a question typed once the model is ready is answered and the
  next prompt is back (its toolbar shows the speed).

Printed side by side with, measured in the same run: a bare ``python -c pass`` and ``python
-c "import mlx_harmony.controller"`` (the chat's main imports), so the ratios hold on any
machine. The demo model comes from ``$MLX_HARMONY_DEMO_MODEL``, else from the user's cache
(built first if missing, not timed), which the chat finds as it does for a user.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

TARGET_S = 3.0
CPR_REQUEST = b"\x1b[6n"
PROMPT_MARK = b"reasoning "  # in the bottom toolbar, drawn with the first prompt
READY_MARK = b"context "  # the toolbar's context count, once the model is loaded


def demo_model(folder: Path) -> tuple[Path | None, str]:
    """The demo model to time: ``$MLX_HARMONY_DEMO_MODEL``, else the user's build (made now
    if missing, not timed), found by the chat in its cache the way a user's chat finds it."""
    env = os.environ.get("MLX_HARMONY_DEMO_MODEL")
    if env:
        return Path(env), "the demo model ($MLX_HARMONY_DEMO_MODEL)"
    from mlx_harmony.demo_model import ensure_demo_model, mlx_harmony_home

    built = Path(ensure_demo_model(progress=True))
    (folder / "home").mkdir(parents=True, exist_ok=True)
    (folder / "home" / "models").symlink_to(mlx_harmony_home() / "models")
    return None, f"the demo model (built in {built})"


def run_once(
    command: list[str], env: dict[str, str], *, ask: str | None, timeout: float
) -> dict[str, float]:
    """Start `command` on a pseudo-terminal; the seconds to each mark."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    marks: dict[str, float] = {}
    screen = b""
    answer_from = 0
    deadline = started + timeout
    try:
        while time.perf_counter() < deadline:
            ready, _, _ = select.select([master], [], [], 0.01)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            now = time.perf_counter() - started
            screen += data
            for _ in range(data.count(CPR_REQUEST)):
                os.write(master, b"\x1b[1;1R")  # the cursor position, as a terminal answers
            if "first prompt" not in marks and PROMPT_MARK in screen:
                marks["first prompt"] = now
            if "first prompt" in marks and "model ready" not in marks and READY_MARK in screen:
                marks["model ready"] = now
                if ask:
                    os.write(master, ask.encode() + b"\r")
                    answer_from = len(screen)
            if ask and "first answer" not in marks and answer_from:
                tail = screen[answer_from:]
                if b"tok/s" in tail:
                    marks["first answer"] = now
            done = "model ready" in marks and (not ask or "first answer" in marks)
            if done:
                break
    finally:
        os.write(master, b"\x04")  # Ctrl-D
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.close(master)
    if "first prompt" not in marks:
        tail = screen[-2000:].decode("utf-8", "replace")
        raise RuntimeError(f"no prompt within {timeout:.0f} s; the terminal showed:\n{tail}")
    return marks


def timed_command(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", help="A model folder instead of the demo model.")
    parser.add_argument(
        "--ask", default="Hello!", help="Question for the first-answer time ('' to skip)."
    )
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)

    chat = shutil.which("mlx-harmony-chat", path=str(Path(sys.executable).parent))
    if chat is None:
        print("mlx-harmony-chat is not installed in this environment; run `uv sync`")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "TERM": "xterm-256color", "MLX_HARMONY_HOME": str(folder / "home")}
        command = [chat, "--temperature", "0", "--max-tokens", "200"]
        if args.model:
            what = f"the model in {args.model}"
            command += ["--model", args.model]
        else:
            model, what = demo_model(folder)
            if model is not None:
                env["MLX_HARMONY_DEMO_MODEL"] = str(model)
        print(f"mlx-harmony-chat start-up with {what}; median of {args.repeat} runs")

        run_once(command, env, ask=None, timeout=args.timeout)  # warm the file cache
        pythons, imports, runs = [], [], []
        for _ in range(args.repeat):  # interleaved, so a busy moment hits all three alike
            pythons.append(timed_command([sys.executable, "-c", "pass"], env))
            imports.append(
                timed_command([sys.executable, "-c", "import mlx_harmony.controller"], env)
            )
            runs.append(run_once(command, env, ask=args.ask or None, timeout=args.timeout))
        python = statistics.median(pythons)

    def median(mark: str) -> float | None:
        values = [r[mark] for r in runs if mark in r]
        return statistics.median(values) if values else None

    first = median("first prompt")
    assert first is not None
    rows = [
        ("python -c pass", python),
        ("import mlx_harmony.controller", statistics.median(imports)),
        ("first prompt", first),
        ("model ready", median("model ready")),
        ("first answer", median("first answer")),
    ]
    print(f"{'':32} {'seconds':>8} {'x python':>9}")
    for name, value in rows:
        if value is None:
            print(f"{name:32} {'-':>8}")
            continue
        print(f"{name:32} {value:8.2f} {value / python:9.1f}")
    verdict = "meets" if first < TARGET_S else "misses"
    print(
        f"first prompt: {first:.2f} s, {first / TARGET_S:.2f} of the {TARGET_S:.0f} s target "
        f"({verdict} it)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
