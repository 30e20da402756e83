"""The built-in backends, each an ordinary plugin registered through the ``notifier`` entry points."""
