"""An httpx client for the mlx-harmony server (and any OpenAI-compatible chat server).

`Client` and `AsyncClient` send chat completions, whole or streamed as typed events
(`ReasoningDelta`, `ContentDelta`, `ToolCallDelta`, `Finish`, `Usage`), with timeouts,
retries of failed connections and one error class per kind of failure. The chat controller's
`ChatBackend` over HTTP is `mlx_harmony.cli.remote.ServerBackend`, built on this client;
this package imports neither MLX nor the controller.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .client import DEFAULT_BASE_URL, AsyncChatStream, AsyncClient, ChatStream, Client
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    RequestTooLargeError,
    ServerError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    error_for_status,
)
from .types import (
    ChatCompletion,
    ContentDelta,
    Finish,
    ReasoningDelta,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Usage,
    events_from_chunk,
)

try:
    __version__ = _version("mlx-harmony-api-client")
except _PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU runs), not installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncChatStream",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletion",
    "ChatStream",
    "Client",
    "ContentDelta",
    "Finish",
    "NotFoundError",
    "ReasoningDelta",
    "RequestTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "StreamEvent",
    "ToolCall",
    "ToolCallDelta",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
    "error_for_status",
    "events_from_chunk",
]
