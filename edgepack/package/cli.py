"""CLI commands of the packaging subsystem (``edgepack package``, ``edgepack diff``)."""

from __future__ import annotations

from typing import Any


def register(app: Any) -> None:
    """Add this subsystem's commands to the top-level Typer ``app``."""
