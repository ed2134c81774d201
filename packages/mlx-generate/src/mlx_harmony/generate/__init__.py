"""Model loading, the generation loop, KV and prompt cache for MLX models."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .batch import (
    BatchGenerator,
    BatchOutput,
    BatchRequest,
    BatchStats,
    BatchTokenGenerator,
    PrefillInfo,
)
from .cache import CacheReuse, PromptCache, common_prefix_len, make_cache, maybe_quantize_kv_cache
from .detokenizer import ByteLevelDetokenizer, Detokenizer, make_detokenizer
from .emit import TokenEvents
from .generator import (
    HARMONY_END_TOKEN,
    HARMONY_STOP_TOKENS,
    GeneratorOptions,
    ModelFacts,
    TokenGenerator,
)
from .kv_quant import QuantizedKVCacheError
from .loading import (
    HARMONY_MODEL_TYPES,
    LoadedModel,
    ModelLoadError,
    is_supported_model_type,
    load_model,
    resolve_model_path,
)
from .loop import (
    Cancel,
    GenerationResult,
    LogitsProcessor,
    Sampler,
    StreamEvent,
    generate,
    generate_step,
    generation_stream,
    release_thread_streams,
    stream_generate,
)
from .loop_detection import LoopDetectionMode, LoopDetector, make_loop_detector
from .shared_cache import CacheHit, SharedPromptCache
from .speculative import DraftModel, load_draft_model
from .stats import CacheReuseMode, GenerationStats, StopReason
from .stop_strings import StopStringMatcher

try:
    __version__ = _version("mlx-harmony-generate")
except _PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU benchmark), not installed
    __version__ = "0+unknown"

__all__ = [
    "HARMONY_END_TOKEN",
    "HARMONY_MODEL_TYPES",
    "HARMONY_STOP_TOKENS",
    "BatchGenerator",
    "BatchOutput",
    "BatchRequest",
    "BatchStats",
    "BatchTokenGenerator",
    "ByteLevelDetokenizer",
    "CacheHit",
    "CacheReuse",
    "CacheReuseMode",
    "Cancel",
    "Detokenizer",
    "DraftModel",
    "GenerationResult",
    "GenerationStats",
    "GeneratorOptions",
    "LoadedModel",
    "LogitsProcessor",
    "LoopDetectionMode",
    "LoopDetector",
    "ModelFacts",
    "ModelLoadError",
    "PrefillInfo",
    "PromptCache",
    "QuantizedKVCacheError",
    "Sampler",
    "SharedPromptCache",
    "StopReason",
    "StopStringMatcher",
    "StreamEvent",
    "TokenEvents",
    "TokenGenerator",
    "__version__",
    "common_prefix_len",
    "generate",
    "generate_step",
    "generation_stream",
    "is_supported_model_type",
    "load_draft_model",
    "load_model",
    "make_cache",
    "make_detokenizer",
    "make_loop_detector",
    "maybe_quantize_kv_cache",
    "release_thread_streams",
    "resolve_model_path",
    "stream_generate",
]
