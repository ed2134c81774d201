"""An OpenAI-compatible FastAPI server for gpt-oss and other MLX models.

`create_app(settings)` builds the app; its lifespan starts the `ModelWorker`, the one thread
that owns the model, and stores the services on ``app.state``. ``mlx-harmony-server`` (`main`)
runs it with uvicorn.
"""

from .app import create_app
from .chat import ChatPlan, ChatService, plan_chat
from .cli import main
from .models import DEMO_MODEL_ID, ModelEntry, ModelRegistry, demo_model_folder, load_generator
from .responses import ResponsesService
from .serving import Serving
from .settings import ServerSettings
from .tool_names import ToolNameMap
from .version import __version__
from .worker import ModelWorker, TurnPlan, WorkerStats

__all__ = [
    "DEMO_MODEL_ID",
    "ChatPlan",
    "ChatService",
    "ModelEntry",
    "ModelRegistry",
    "ModelWorker",
    "ResponsesService",
    "ServerSettings",
    "Serving",
    "ToolNameMap",
    "TurnPlan",
    "WorkerStats",
    "__version__",
    "create_app",
    "demo_model_folder",
    "load_generator",
    "main",
    "plan_chat",
]
