"""``python -m notifier``: the same as the ``notifier`` command."""

from .cli import main

raise SystemExit(main())
