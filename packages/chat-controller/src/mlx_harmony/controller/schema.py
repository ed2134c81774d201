"""Regenerate the committed prompt-config schema: ``python -m mlx_harmony.controller.schema PATH``.

Without PATH the schema goes to stdout. A test fails when configs/prompt-config.schema.json
differs from `render_prompt_config_schema()`, so run this after changing PromptConfig.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .config import render_prompt_config_schema

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render_prompt_config_schema()
    if not args:
        sys.stdout.write(text)
        return 0
    for path in args:
        Path(path).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
