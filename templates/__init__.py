"""The default message templates, one ``<event>.j2`` per event (``<backend>/`` holds variants)."""
