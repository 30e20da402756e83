"""The built-in backends, each an ordinary plugin in the ``notifier`` entry-point group."""
