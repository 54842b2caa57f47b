"""The ``durable`` command line."""

from durable_core.cli._main import main

__all__ = ["main"]
