"""One module per dashboard; each has ``KEY``, ``TITLE`` and ``build(config)``."""
