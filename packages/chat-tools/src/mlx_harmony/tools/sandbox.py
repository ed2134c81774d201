"""OS-level confinement for the `python` tool: bubblewrap on Linux, sandbox-exec on macOS.

The python tool runs code a model wrote, so the boundary must hold against code that tries to
get out (``ctypes`` reaches every system call an audit hook would miss). Each run is wrapped in
a command that the operating system enforces:

- **Linux**: `bubblewrap <https://github.com/containers/bubblewrap>`_ (``bwrap``) starts the
  interpreter in new mount, PID, IPC, UTS and (unless network is allowed) network namespaces.
  The root is an empty tmpfs with read-only binds of ``/usr``, the ``/bin`` and ``/lib`` links
  and the interpreter's prefixes; the scratch folder is the only writable bind, ``/tmp`` a
  small private tmpfs. ``/etc``, ``/home``, ``/root`` and the user's files are not there.
  The PID namespace dies with its first process, so children (``setsid`` ones included) never
  outlive a run. The process count is bounded by ``RLIMIT_NPROC``, which the kernel ignores for
  uid 0: run as root, the sandbox keeps only ``CAP_SETUID``/``CAP_SETGID`` so that the child's
  bootstrap can switch to `SANDBOX_UID` (and a user namespace of its own, so the count covers
  that run only) before any model code runs.
- **macOS**: ``sandbox-exec`` with a profile from `render_macos_profile` that denies network,
  writes outside the scratch folder, reads of the user's folders and ``fork``.

Where neither is available `find_sandbox` raises `SandboxUnavailableError` with what to install,
unless the caller explicitly allows running unconfined.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "SANDBOX_UID",
    "Sandbox",
    "SandboxUnavailableError",
    "bubblewrap_argv",
    "find_sandbox",
    "python_prefixes",
    "render_macos_profile",
]

# "nobody" on Debian, Ubuntu, Fedora and macOS: a uid that owns nothing.
SANDBOX_UID = 65534

SandboxKind = Literal["bubblewrap", "sandbox-exec", "none"]

_LINUX_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: "
    "`dnf install bubblewrap`, Arch: `pacman -S bubblewrap`)"
)
_UNSAFE_HINT = (
    "or, if you accept running model-written code with your own rights, turn the sandbox off "
    "explicitly (mlx-harmony-chat --python-unsandboxed, or PythonTool(allow_unsandboxed=True))"
)


class SandboxUnavailableError(RuntimeError):
    """No OS sandbox can confine the python tool here; the message says what to install."""


@dataclass(frozen=True)
class Sandbox:
    """The confinement every run of the python tool goes through.

    `drop_to_uid` is set when the sandbox starts as root: the child's bootstrap then switches
    to that uid itself, because the kernel does not count processes for uid 0.
    """

    kind: SandboxKind
    executable: str | None = None
    drop_to_uid: int | None = None
    disable_userns: bool = False

    @property
    def confined(self) -> bool:
        return self.kind != "none"


def python_prefixes(python: str) -> tuple[str, ...]:
    """The folders `python` needs to start and import installed packages (read-only binds).

    For the running interpreter these are its prefix and base prefix (a venv and the Python it
    was made from); for another interpreter, the folder above its ``bin`` for both the path as
    given and the resolved one.
    """
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        candidates: Iterable[str] = (
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            sys.base_exec_prefix,
        )
    else:
        candidates = (
            os.path.dirname(os.path.dirname(os.path.abspath(python))),
            os.path.dirname(os.path.dirname(os.path.realpath(python))),
        )
    out: list[str] = []
    for candidate in candidates:
        path = os.path.realpath(candidate)
        if path != "/" and path not in out and os.path.isdir(path):
            out.append(path)
    return tuple(out)


def bubblewrap_argv(
    bwrap: str,
    *,
    scratch: Path,
    read_only: Sequence[str],
    allow_network: bool,
    as_root: bool,
    disable_userns: bool = True,
    tmp_size_mb: int = 64,
) -> list[str]:
    """The ``bwrap`` command line that confines one run (the python command goes after it)."""
    argv = [
        bwrap,
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]
    if not allow_network:
        argv.append("--unshare-net")
    if as_root:
        # Keep only what the bootstrap needs to become SANDBOX_UID; that switch clears them.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv.append("--unshare-user")
        if disable_userns:
            argv.append("--disable-userns")
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    etc = ["/etc/ld.so.cache"]
    if allow_network:
        etc += ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf"]
        etc += ["/etc/ssl", "/etc/ca-certificates", "/etc/pki"]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for path in etc:
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", str(tmp_size_mb * 2**20), "--tmpfs", "/tmp"]
    mounted = ["/usr"]  # read-only: no folders can be made below
    made: set[str] = set()
    for prefix in read_only:
        if not _under(prefix, mounted):
            argv += _parent_dirs(prefix, mounted, made)
            argv += ["--ro-bind", prefix, prefix]
            mounted.append(prefix)
    # The bootstrap enters the scratch folder: as root without capabilities bwrap itself may
    # not, once the folder belongs to SANDBOX_UID.
    argv += _parent_dirs(str(scratch), mounted, made)
    argv += ["--bind", str(scratch), str(scratch), "--chdir", "/", "--"]
    return argv


def _under(path: str, folders: Iterable[str]) -> bool:
    return any(path == folder or path.startswith(folder.rstrip("/") + "/") for folder in folders)


def _parent_dirs(path: str, mounted: Sequence[str], made: set[str]) -> list[str]:
    """``--dir`` options that make the folders above `path` traversable (bwrap's are 0700)."""
    out: list[str] = []
    for parent in reversed(Path(path).parents):
        name = str(parent)
        if name != "/" and name not in made and not _under(name, mounted):
            out += ["--perms", "0755", "--dir", name]
            made.add(name)
    return out


def _quote_sbpl(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_macos_profile(
    *, scratch: Path, read_only: Sequence[str], allow_network: bool, home: str = "/Users"
) -> str:
    """The sandbox-exec (SBPL) profile for one run; later rules win over earlier ones.

    Denies network (unless allowed), every write but the scratch folder and ``/dev/null``,
    reads of the users' folders, mounted volumes and root's home except the scratch folder
    and the interpreter's prefixes, and ``fork`` (one process per run).
    """
    scratch_rule = f"(subpath {_quote_sbpl(str(scratch))})"
    readable = " ".join(f"(subpath {_quote_sbpl(p)})" for p in (str(scratch), *read_only))
    lines = ["(version 1)", "(allow default)"]
    if not allow_network:
        lines.append("(deny network*)")
    lines += [
        "(deny file-write*)",
        f'(allow file-write* {scratch_rule} (literal "/dev/null"))',
        f"(deny file-read* (subpath {_quote_sbpl(home)}) "
        '(subpath "/Volumes") (subpath "/private/var/root"))',
        f"(allow file-read* {readable})",
        "(deny process-fork)",
    ]
    return "\n".join(lines) + "\n"


@functools.cache
def _bwrap_has_option(bwrap: str, option: str) -> bool:
    try:
        done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in done.stdout + done.stderr


@functools.cache
def _probe_bwrap(bwrap: str, as_root: bool, disable_userns: bool) -> str | None:
    """None when a minimal sandbox starts here; else bwrap's complaint."""
    argv = bubblewrap_argv(
        bwrap,
        scratch=Path("/tmp"),
        read_only=(),
        allow_network=False,
        as_root=as_root,
        disable_userns=disable_userns,
    )
    try:
        done = subprocess.run(
            [*argv, "/bin/sh", "-c", "exit 0"],
            capture_output=True,
            text=True,
            timeout=30,
            # A clean environment, as for real runs: an LD_PRELOAD (say, a threaded BLAS)
            # can hang bwrap itself.
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def find_sandbox(*, allow_unsandboxed: bool = False) -> Sandbox:
    """The sandbox this machine offers; `SandboxUnavailableError` when there is none.

    With `allow_unsandboxed`, a missing sandbox gives ``Sandbox("none")`` instead: the code
    then runs with the caller's rights, limited only by rlimits and audit hooks.
    """
    problem: str
    if sys.platform.startswith("linux"):
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            problem = f"the python tool needs bubblewrap (`bwrap`) to confine code: {_LINUX_HINT}"
        else:
            as_root = os.geteuid() == 0
            disable_userns = not as_root and _bwrap_has_option(bwrap, "--disable-userns")
            complaint = _probe_bwrap(bwrap, as_root, disable_userns)
            if complaint is None:
                return Sandbox(
                    "bubblewrap",
                    bwrap,
                    drop_to_uid=SANDBOX_UID if as_root else None,
                    disable_userns=disable_userns,
                )
            problem = (
                f"bubblewrap is installed ({bwrap}) but cannot start a sandbox here: "
                f"{complaint}. It needs unprivileged user namespaces (sysctl "
                "kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0) or root"
            )
    elif sys.platform == "darwin":
        sandbox_exec = shutil.which("sandbox-exec") or (
            "/usr/bin/sandbox-exec" if os.path.exists("/usr/bin/sandbox-exec") else None
        )
        if sandbox_exec is not None:
            return Sandbox("sandbox-exec", sandbox_exec)
        problem = "the python tool needs macOS's /usr/bin/sandbox-exec, which is missing"
    else:
        problem = f"the python tool has no sandbox for {sys.platform}"
    if allow_unsandboxed:
        return Sandbox("none")
    raise SandboxUnavailableError(f"{problem}; {_UNSAFE_HINT}")
