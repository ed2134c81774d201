"""``python -m mlx_harmony.bench`` (what the GPU script runs, where no console script exists)."""

import sys

from .cli import main

sys.exit(main())
