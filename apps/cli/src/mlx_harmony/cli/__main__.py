"""``python -m mlx_harmony.cli``: the chat, as ``mlx-harmony-chat``."""

import sys

from .chat import main

sys.exit(main())
