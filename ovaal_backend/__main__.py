"""``python -m ovaal_backend``: see cli.py."""

import sys

from .cli import main

sys.exit(main())
