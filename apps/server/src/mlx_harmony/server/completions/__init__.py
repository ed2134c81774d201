"""``POST /v1/completions``: the legacy text completion of a raw prompt (no chat template)."""

from .router import completions_router

__all__ = ["completions_router"]
