"""CLI command of the recipe search (``edgepack search``)."""

from __future__ import annotations

from typing import Any


def register(app: Any) -> None:
    """Add this subsystem's commands to the top-level Typer ``app``."""
