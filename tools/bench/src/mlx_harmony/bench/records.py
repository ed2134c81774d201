"""What a run writes: one `TurnRecord` a line in ``records.jsonl``, and ``run.json``.

Every metric is measured by the harness the same way for every target (see `TurnRecord`'s
field descriptions); what a target cannot tell is ``null``, never 0.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "RECORDS_FILE",
    "RECORD_SCHEMA",
    "RUN_FILE",
    "TARGETS",
    "RunInfo",
    "TargetName",
    "TurnRecord",
    "git_commit",
    "machine_info",
    "package_versions",
    "portable_path",
    "read_records",
    "read_run",
    "scrub_paths",
    "utc_now",
    "write_records",
]

RECORD_SCHEMA = 1
RECORDS_FILE = "records.jsonl"
RUN_FILE = "run.json"
TARGETS = ("local", "server", "mlx-lm", "mlx-lm-server")
TargetName = Literal["local", "server", "mlx-lm", "mlx-lm-server"]


class TurnRecord(BaseModel):
    """One turn of one prompt on one target. Unknown values are None."""

    model_config = ConfigDict(extra="forbid")

    prompt_id: str
    turn: int = Field(ge=0, description="0 for the first user message of the conversation.")
    target: str
    category: str | None = None
    client: int = Field(default=0, ge=0, description="Which concurrent client ran it.")
    prompt_tokens: int | None = Field(
        default=None,
        description="Prompt tokens of the reply (summed over tool rounds and retries).",
    )
    reused_prompt_tokens: int | None = Field(
        default=None,
        description="Prompt tokens served from the prompt cache (server: cached_tokens).",
    )
    context_tokens: int | None = Field(
        default=None, description="Tokens in the context when the turn started (its first prompt)."
    )
    ttft_s: float | None = Field(
        default=None,
        description="Request sent -> first generated token (in-process) or first streamed "
        "chunk with text (servers), seconds.",
    )
    prefill_tokens_per_s: float | None = Field(
        default=None, description="(prompt_tokens - reused_prompt_tokens) / ttft_s."
    )
    decode_tokens_per_s: float | None = Field(
        default=None,
        description="(completion_tokens - 1) / (last token - first token), seen by the client.",
    )
    completion_tokens: int | None = None
    reasoning_tokens: int | None = Field(
        default=None, description="Completion tokens of the analysis channel."
    )
    stop_reason: str | None = None
    retries: int | None = Field(
        default=None, description="Attempts thrown away and generated again."
    )
    peak_memory_gb: float | None = Field(
        default=None, description="MLX's peak memory during the turn (in-process targets)."
    )
    process_peak_rss_gb: float | None = Field(
        default=None, description="The server process's peak resident memory so far (Linux VmHWM)."
    )
    wall_s: float | None = Field(
        default=None, description="Request sent -> reply complete, seconds."
    )
    error: str | None = Field(
        default=None, description="Why the turn failed; None when it did not."
    )

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def e2e_tokens_per_s(self) -> float | None:
        """completion_tokens / wall_s: what a user gets, prefill and streaming included; the
        one rate every target measures alike (a server that streams nothing until the end
        still has it)."""
        if self.error is not None or self.completion_tokens is None or not self.wall_s:
            return None
        return self.completion_tokens / self.wall_s


class RunInfo(BaseModel):
    """``run.json``: how a run was made, on what, and its run-level numbers."""

    model_config = ConfigDict(extra="allow")

    record_schema: int = RECORD_SCHEMA
    target: str
    model: str
    settings: dict[str, Any] = Field(default_factory=dict)
    command_line: list[str] = Field(default_factory=list)
    git_commit: str | None = None
    versions: dict[str, str | None] = Field(default_factory=dict)
    machine: dict[str, Any] = Field(default_factory=dict)
    started_at: str | None = None
    ended_at: str | None = None
    concurrency: int = 1
    prompts: int = 0
    turns: int = 0
    errors: int = 0
    measured_s: float | None = Field(
        default=None, description="Wall time of the measured requests (no start-up, no warm-up)."
    )
    completion_tokens: int | None = None
    aggregate_completion_tokens_per_s: float | None = Field(
        default=None, description="All completion tokens / measured_s: throughput across clients."
    )
    server_log: str | None = None


def write_records(path: str | os.PathLike[str], records: Iterable[TurnRecord]) -> int:
    """Write records as JSON lines (replacing the file); returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(record.model_dump_json() + "\n")
            count += 1
    return count


def read_records(path: str | os.PathLike[str]) -> list[TurnRecord]:
    """Read a ``records.jsonl`` file (or the one in a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORDS_FILE
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(TurnRecord.model_validate_json(line))
        except ValueError as error:
            raise ValueError(f"{path}:{number}: not a benchmark record: {error}") from None
    return records


def read_run(folder: str | os.PathLike[str]) -> RunInfo:
    path = Path(folder) / RUN_FILE
    return RunInfo.model_validate_json(path.read_text(encoding="utf-8"))


def portable_path(text: str) -> str:
    """A path as a committed result may show it: relative to the working folder when under it,
    ``<venv>/...`` inside this interpreter's environment, else only its last part, so that no
    result names a user's home, a temporary folder or a virtualenv. Anything that is not an
    absolute path of this machine (a Hugging Face repo id, a URL path) is returned unchanged."""
    if not os.path.isabs(text):
        return text
    path = Path(text)
    roots = {Path.cwd(), Path.home(), Path(sys.prefix), Path(sys.base_prefix), Path("/tmp")}
    if not path.exists() and not any(path.is_relative_to(root) for root in roots):
        return text
    venv, python = Path(sys.prefix), Path(sys.base_prefix)
    if venv != Path("/") and path.is_relative_to(venv):
        return (Path("<venv>") / path.relative_to(venv)).as_posix()
    if path.is_relative_to(Path.cwd()):
        return path.relative_to(Path.cwd()).as_posix() or "."
    if python != Path("/") and path.is_relative_to(python):
        return (Path("<python>") / path.relative_to(python)).as_posix()
    return path.name or text


def scrub_paths(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, strings) with every absolute path of this machine made
    portable by `portable_path`, including the words of a command line held in one string."""
    if isinstance(value, dict):
        return {key: scrub_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_paths(item) for item in value]
    if isinstance(value, str):
        if " " in value:
            return " ".join(portable_path(word) for word in value.split(" "))
        return portable_path(value)
    return value


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """HEAD's commit, with ``+dirty`` when the tree has changes; None outside a checkout."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return commit + ("+dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str | None]:
    """mlx, mlx-lm (and MLX's CUDA backend if there) and every mlx-harmony distribution."""
    names = {"mlx", "mlx-lm", "mlx-metal", "mlx-cuda-13", "mlx-cuda", "openai-harmony"}
    for dist in distributions():
        given = dist.metadata.get_all("Name")  # `PackageMetadata` declares no `get`
        name = given[0] if given else ""
        if name.lower().startswith("mlx-harmony"):
            names.add(name.lower())
    found: dict[str, str | None] = {}
    for name in sorted(names):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            if name in ("mlx", "mlx-lm"):
                found[name] = None
    found["python"] = platform.python_version()
    return found


def machine_info() -> dict[str, Any]:
    """Where the run happened: OS, CPU count, memory, MLX's default device."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 1e9, 2)
    except ImportError:
        info["memory_gb"] = None
    try:
        import mlx.core as mx

        info["mlx_device"] = str(mx.default_device())
        device = mx.device_info() if hasattr(mx, "device_info") else {}
        info["mlx_device_info"] = {
            k: v for k, v in dict(device).items() if isinstance(v, str | int | float)
        }
    except Exception as error:  # MLX missing or no device: still record the rest
        info["mlx_device"] = f"unavailable: {error}"
    return info
