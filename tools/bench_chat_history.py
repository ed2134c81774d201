"""Benchmark: load + migrate + save of a large legacy (v1) chat log.

    uv run python tools/bench_chat_history.py            # 10,000 messages, best of 5
    uv run python tools/bench_chat_history.py --messages 50000 --repeat 3

Target: a 10,000-message v1 log loads (parse, validate, migrate, check) and saves (dump, atomic
write with fsync) in under 1 s. Printed side by side with plain ``json.loads`` + ``json.dumps``
+ write of the same file, measured in the same run, so the ratio holds on any machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mlx_harmony.chat_history import (
    ChatLog,
    check_chat,
    dumps_chat,
    load_chat,
    loads_chat,
    migrate,
    save_chat,
)
from mlx_harmony.chat_history.migrations import validate_version
from mlx_harmony.chat_history.storage import parse_json, write_atomic
from mlx_harmony.chat_history.testing import generate_v1_log

TARGET_S = 1.0


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """(best wall s, median wall s, best CPU s) over ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), statistics.median(walls), min(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    n = args.messages
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        v1_path = folder / "legacy.json"
        v1_path.write_text(json.dumps(generate_v1_log(n, seed=args.seed), indent=2))
        out_path = folder / "migrated.json"
        v2_path = folder / "current.json"
        save_chat(load_chat(v1_path), v2_path)
        size = v1_path.stat().st_size

        def baseline() -> None:
            data = json.loads(v1_path.read_bytes())
            (folder / "plain.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))

        def ours() -> None:
            save_chat(load_chat(v1_path), out_path)

        def resume() -> None:
            save_chat(load_chat(v2_path), out_path)

        log = load_chat(v2_path)

        def one_turn() -> None:
            log.append_user("one more question")
            log.append_assistant("one more answer", hyperparameters={"temperature": 0.3})
            save_chat(log, out_path)

        raw = v1_path.read_bytes()
        data = parse_json(raw)
        latest = migrate(data)
        model = validate_version(ChatLog, latest)
        text = dumps_chat(model).encode()
        stages = [
            ("parse JSON", lambda: parse_json(raw)),
            ("validate v1 + migrate", lambda: migrate(data)),
            ("validate v2", lambda: validate_version(ChatLog, latest)),
            ("consistency checks", lambda: check_chat(model)),
            ("dump JSON", lambda: dumps_chat(model)),
            ("atomic write + fsync", lambda: write_atomic(out_path, text)),
        ]

        print(f"{n:,} messages, v1 file of {size / 1e6:.1f} MB; best of {args.repeat} runs\n")
        print(
            "| what                                 |  best s | median s |  CPU s |  messages/s |"
        )
        print(
            "|--------------------------------------|--------:|---------:|-------:|------------:|"
        )

        def row(label: str, fn: Callable[[], object]) -> float:
            best, median, cpu = timed(fn, args.repeat)
            print(f"| {label:<36} | {best:7.3f} | {median:8.3f} | {cpu:6.3f} | {n / best:11,.0f} |")
            return best

        total = row("load + migrate + save (v1 -> v2)", ours)
        plain = row("baseline: json.loads + dumps + write", baseline)
        row("load + save of the v2 file (resume)", resume)
        for label, fn in stages:
            row(f"  stage: {label}", fn)
        turn, _, _ = timed(one_turn, args.repeat)
        loads_chat(v2_path.read_bytes())  # warm path sanity: the saved file loads
        print(f"\nappend a turn + save the whole log: {turn * 1e3:.1f} ms")
        print(f"ratio to plain JSON: {total / plain:.1f}x")
        verdict = "OK" if total < TARGET_S else "MISSED"
        print(
            f"load + migrate + save: {total:.3f} s ({n / total:,.0f} messages/s); "
            f"target < {TARGET_S:.0f} s: {verdict}"
        )
    return 0 if total < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
