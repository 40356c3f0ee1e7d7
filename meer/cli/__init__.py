"""Command-line entry points (``meer-train``, ``meer-restore``, ``meer-mask``, ``meer-align``, ``meer-eval``)."""
