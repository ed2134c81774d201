"""From parsed flags to a ready session: read the files, merge the settings, find the model,
build the backend.

`prepare(args)` does the reading (profiles, prompt config, the chat to resume) and calls the
pure `merge_settings`; `locate_model` finds the model folder (building the demo model the
first time, downloading a hub repo when needed); `make_backend` loads it, or connects to a
server. The heavy imports (mlx-generate, mlx-lm) happen only inside `make_backend`, which the
chat runs on its worker thread so the prompt is up while the weights load.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_harmony.chat_history import ChatLog, ChatLogError, Finding, load_chat
from mlx_harmony.controller import (
    ChatBackend,
    ConfigError,
    ConfigWarning,
    DebugOptions,
    LocalBackend,
    Profiles,
    PromptConfig,
    ToolRegistry,
)

from .options import command_line_from
from .settings import Settings, SettingsError, merge_settings

__all__ = [
    "DEMO_MODEL_ENV",
    "PROFILES_ENV",
    "PROFILE_FILES",
    "BackendFactory",
    "CliError",
    "Launch",
    "ModelLocation",
    "demo_model_path",
    "in_chats_dir",
    "locate_model",
    "make_backend",
    "mlx_harmony_home",
    "prepare",
]

DEMO_MODEL_ENV = "MLX_HARMONY_DEMO_MODEL"
"""A prebuilt demo model folder to use instead of building one (tests, CI)."""
# Where mlx-harmony-demo-model keeps its build (`demo_model_path()`), and the file it writes
# last into a finished build (`BUILD_RECORD`). Importing that package imports mlx-lm (seconds),
# so the chat looks for a finished build itself and leaves the full check to the worker
# thread; a test keeps these in step with the package.
DEMO_MODEL_FOLDER = ("models", "mlx-harmony-demo")
DEMO_BUILD_RECORD = "mlx_harmony_demo.json"
PROFILES_ENV = "MLX_HARMONY_PROFILES"
"""The profiles file when ``--profiles-file`` is not given (the server reads it too)."""
PROFILE_FILES = ("profiles.json", "configs/profiles.json")
"""Where ``--profile`` looks next (in the current folder)."""


BackendFactory = Callable[..., ChatBackend]
"""``(launch, location, *, on_close) -> ChatBackend``: `make_backend` or a test double."""


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 1 (2 for bad input that
    argparse could not see, such as a JSON schema the grammar engine refuses)."""

    def __init__(self, message: str, *, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class Launch:
    """Everything read from disk and merged, before any model is loaded."""

    args: argparse.Namespace
    settings: Settings
    prompt_config_path: str | None = None
    log: ChatLog | None = None
    chat_path: Path | None = None
    autosave: bool = False
    notes: list[str] = field(default_factory=list)
    profile_names: tuple[str, ...] = ()
    """The profiles of the profiles file in use (or found), for ``\\models``."""

    @property
    def config(self) -> PromptConfig:
        return self.settings.config


@dataclass(frozen=True)
class ModelLocation:
    """Where the model is: a local folder (``path``) or a server (``server``); ``name`` is
    what the chat log records (None: the server's default model) and ``label`` what the
    toolbar shows."""

    name: str | None
    label: str
    path: Path | None = None
    server: str | None = None
    check_demo: bool = False
    """The demo model's build was found but not checked against the installed recipe: the
    backend runs ``ensure_demo_model`` (which rebuilds a stale one) before loading it."""


def _profiles_file(args: argparse.Namespace) -> Path:
    if args.profiles_file:
        return Path(args.profiles_file)
    if os.environ.get(PROFILES_ENV):
        return Path(os.environ[PROFILES_ENV]).expanduser()
    for candidate in PROFILE_FILES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise CliError(
        f"--profile {args.profile} needs a profiles file: pass --profiles-file PATH or set "
        f"{PROFILES_ENV} (looked for {' and '.join(PROFILE_FILES)} in {Path.cwd()})"
    )


def _load_chat(path: Path, notes: list[str]) -> ChatLog:
    findings: list[Finding] = []
    try:
        log = load_chat(path, on_warning=findings.append)
    except ChatLogError as error:
        raise CliError(f"cannot load the chat: {error}") from None
    notes.extend(f"warning: {finding}" for finding in findings)
    return log


def in_chats_dir(path: str | os.PathLike[str], chats_dir: Path | None) -> Path:
    """A bare file name (no folder part, not absolute) is taken from the prompt config's
    ``chats_dir`` when it sets one; any other path is used as given."""
    given = Path(path).expanduser()
    if chats_dir is None or given.is_absolute() or given.parent != Path("."):
        return given
    return chats_dir / given


def _chat_files(
    args: argparse.Namespace, chats_dir: Path | None, notes: list[str]
) -> tuple[ChatLog | None, Path | None, bool]:
    """The chat to resume, the file to save to and whether to save after every turn."""
    log: ChatLog | None = None
    chat_path: Path | None = None
    autosave = False
    if args.chat:
        chat_path, autosave = in_chats_dir(args.chat, chats_dir), True
        if chat_path.exists():
            log = _load_chat(chat_path, notes)
    if args.load_conversation:
        chat_path = in_chats_dir(args.load_conversation, chats_dir)
        if not chat_path.exists():
            raise CliError(
                f"--load-conversation {chat_path}: no such file (use --chat PATH to start "
                "a chat file that does not exist yet)"
            )
        log = _load_chat(chat_path, notes)
    if args.save_conversation:
        target = in_chats_dir(args.save_conversation, chats_dir)
        if target.exists() and (chat_path is None or target.resolve() != chat_path.resolve()):
            raise CliError(
                f"--save-conversation {target}: the file exists and would be overwritten; "
                "continue it with --chat PATH, or pick a new name"
            )
        chat_path, autosave = target, True
    return log, chat_path, autosave


def prepare(args: argparse.Namespace, *, chat_files: bool = True) -> Launch:
    """Read the sources the flags name and merge the settings (see `merge_settings`).

    The prompt config named by ``--prompt-config`` or the profile is read first, so that its
    ``chats_dir`` places bare chat file names; a resumed chat's own prompt config is the
    fallback when neither names one."""
    notes: list[str] = []
    log: ChatLog | None = None
    chat_path: Path | None = None
    autosave = False
    profile_names: tuple[str, ...] = ()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        try:
            profile = None
            if args.profile or args.profiles_file:
                profiles = Profiles.from_file(_profiles_file(args))
                profile_names = profiles.names
                profile = profiles.resolve(args.profile)
            else:
                profile_names = _found_profile_names(notes)
            config: PromptConfig | None = None
            config_path: str | None = None
            if args.prompt_config:
                config = PromptConfig.from_file(args.prompt_config)
                config_path = os.fspath(Path(args.prompt_config).resolve())
            elif profile is not None:
                config = profile.prompt_config
                config_path = (
                    os.fspath(profile.prompt_config_path) if profile.prompt_config_path else None
                )
            if chat_files:
                chats_dir = config.chats_dir if config is not None else None
                log, chat_path, autosave = _chat_files(args, chats_dir, notes)
            if config is None and log is not None and log.header.prompt_config_path:
                saved = Path(log.header.prompt_config_path)
                if saved.is_file():
                    config, config_path = PromptConfig.from_file(saved), os.fspath(saved)
                else:
                    notes.append(
                        f"the chat's prompt config {saved} is gone; using the chat's settings only"
                    )
            settings = merge_settings(
                command_line_from(args),
                chat=log.header if log is not None else None,
                prompt_config=config,
                profile=(profile.name, profile.model) if profile is not None else None,
                chat_source=os.fspath(chat_path) if chat_path is not None else "the chat",
            )
        except (ConfigError, SettingsError) as error:
            raise CliError(str(error)) from None
    for w in caught:  # config warnings become start-up notes; others go on as usual
        if issubclass(w.category, ConfigWarning):
            notes.append(f"warning: {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    notes.extend(settings.skipped)
    return Launch(args, settings, config_path, log, chat_path, autosave, notes, profile_names)


def _found_profile_names(notes: list[str]) -> tuple[str, ...]:
    """The profiles of a profiles file found where ``--profile`` looks, for ``\\models``."""
    candidates = [os.environ.get(PROFILES_ENV, ""), *PROFILE_FILES]
    path = next(
        (Path(c).expanduser() for c in candidates if c and Path(c).expanduser().is_file()), None
    )
    if path is None:
        return ()
    try:
        return Profiles.from_file(path).names
    except ConfigError as error:
        notes.append(f"warning: \\models will not list profiles: {error}")
        return ()


def mlx_harmony_home() -> Path:
    """``$MLX_HARMONY_HOME``, else ~/.cache/mlx-harmony (the demo-model package's rule)."""
    env = os.environ.get("MLX_HARMONY_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlx-harmony"


def demo_model_path(*, progress: bool = True) -> tuple[Path, bool]:
    """The demo model's folder: ``$MLX_HARMONY_DEMO_MODEL``, a finished build (still to be
    checked: the second value), else built now with a progress bar."""
    env = os.environ.get(DEMO_MODEL_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path / "config.json").is_file():
            raise CliError(f"{DEMO_MODEL_ENV}={env} is not a model folder (no config.json)")
        return path, False
    built = mlx_harmony_home().joinpath(*DEMO_MODEL_FOLDER)
    if (built / DEMO_BUILD_RECORD).is_file():
        return built, True
    return _ensure_demo_model(progress=progress), False


def _ensure_demo_model(*, progress: bool) -> Path:
    if progress:
        print("Building the demo model (once; about a minute)…", file=sys.stderr)
    from mlx_harmony.demo_model import ensure_demo_model

    return Path(ensure_demo_model(progress=progress))


def locate_model(launch: Launch, *, progress: bool = True) -> ModelLocation:
    """Find the model: the server, a local folder, a name in ``models_dir``, a hub repo
    (downloaded now, with its progress bar), or the demo model (built the first time)."""
    args = launch.args
    model = launch.settings.model
    if args.server:
        label = f"{model} @ {args.server}" if model else args.server
        return ModelLocation(name=model, label=label, server=args.server)
    if model is None:
        path, check = demo_model_path(progress=progress)
        return ModelLocation(name=os.fspath(path), label="demo model", path=path, check_demo=check)
    local = Path(model).expanduser()
    if local.exists():
        return ModelLocation(name=os.fspath(local.resolve()), label=local.name, path=local)
    models_dir = launch.config.models_dir
    if models_dir is not None and (models_dir / model).exists():
        found = models_dir / model
        return ModelLocation(name=os.fspath(found), label=model, path=found)
    from mlx_harmony.generate import ModelLoadError, resolve_model_path

    try:
        path = resolve_model_path(model)
    except ModelLoadError as error:
        raise CliError(str(error)) from None
    return ModelLocation(name=model, label=model.rsplit("/", 1)[-1], path=path)


def make_tools(launch: Launch) -> ToolRegistry | None:
    tools = launch.settings.tools
    if not any(tools.values()):
        return None
    from mlx_harmony.tools.sandbox import SandboxUnavailableError

    try:
        return ToolRegistry.from_flags(
            browser=tools["browser"],
            python=tools["python"],
            apply_patch=tools["apply_patch"],
            workspace=Path.cwd() if tools["apply_patch"] else None,
            python_allow_unsandboxed=bool(getattr(launch.args, "python_unsandboxed", False)),
        )
    except SandboxUnavailableError as error:
        raise CliError(f"--python: {error}") from None


def debug_options(
    args: argparse.Namespace, config: PromptConfig | None = None
) -> DebugOptions | None:
    """The debug output the flags ask for; with ``--debug`` or ``--debug-tokens`` and no
    ``--debug-file``, the files go to the prompt config's ``logs_dir`` when it sets one."""
    folder = args.debug_file
    wanted = args.debug or args.debug_tokens is not None
    if folder is None and wanted and config is not None and config.logs_dir is not None:
        folder = config.logs_dir
    options = DebugOptions(raw=args.debug, tokens=args.debug_tokens, folder=folder)
    return options if options.enabled else None


def make_backend(
    launch: Launch, location: ModelLocation, *, on_close: Callable[[Callable[[], Any]], None]
) -> ChatBackend:
    """Load the model (or connect to the server) and build the backend. Resources to release
    at the end (the generator, the tools) are passed to `on_close`."""
    if location.server is not None:
        return _server_backend(location, on_close=on_close)
    from mlx_harmony.generate import ModelLoadError, TokenGenerator

    assert location.path is not None
    path = _ensure_demo_model(progress=False) if location.check_demo else location.path
    tools = make_tools(launch)
    if tools is not None:
        on_close(tools.close)
    try:
        generator = TokenGenerator(path, launch.config.generator_options(), lazy=launch.config.lazy)
    except ModelLoadError as error:
        raise CliError(str(error)) from None
    except ValueError as error:  # a prompt cache file for another model, a kv_bits misfit, ...
        raise CliError(str(error), exit_status=2) from None
    on_close(generator.close)
    if launch.config.chat_template_args:  # gpt-oss takes only its Harmony settings
        from mlx_harmony.controller import TemplateKwargsError, with_template_kwargs

        try:
            with_template_kwargs(launch.config, {}, harmony=generator.is_harmony)
        except TemplateKwargsError as error:
            raise CliError(f"chat_template_args: {error}", exit_status=2) from None
    constraint = getattr(launch.args, "constraint", None)  # --json-schema / --grammar
    if constraint is not None and generator.speculates:  # set by the prompt config
        raise CliError(
            "--json-schema and --grammar cannot be combined with speculative decoding (the "
            "prompt config sets draft_model or prompt_lookup); drop one of them",
            exit_status=2,
        )
    if constraint is not None:
        from .constrained import constrain_generator

        generator = constrain_generator(generator, constraint)
    return LocalBackend(
        generator, tools=tools, debug=debug_options(launch.args, launch.config.effective())
    )


def _server_backend(
    location: ModelLocation, *, on_close: Callable[[Callable[[], Any]], None]
) -> ChatBackend:
    """The `ServerBackend` over the api-client, once the server answers (and,
    without ``--model``, says which model it serves)."""
    from mlx_harmony.api_client import APIError, Client
    from mlx_harmony.cli.remote import ServerBackend

    assert location.server is not None
    client = Client(location.server, max_retries=0)
    on_close(client.close)
    try:
        served = [m.get("id") for m in client.models()]
    except APIError as error:
        raise CliError(f"the server at {location.server} does not answer: {error}") from None
    model = location.name
    if model is not None and served and model not in served:
        raise CliError(
            f"the server at {location.server} has no model {model!r}; it serves "
            f"{', '.join(map(str, served))}"
        )
    return ServerBackend(client, model=model)
