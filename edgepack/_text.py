"""Short, user-facing text from exceptions (one line, never a traceback)."""

from __future__ import annotations


def first_line(exc: BaseException | object, limit: int = 300, *, typed: bool = False) -> str:
    """The first non-blank line of ``exc``'s message, at most ``limit`` characters; the exception's type name
    when the message is empty. ``typed``: prefixed with the type name (``ValueError: ...``), for a third-party
    exception whose message alone does not say what failed."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if typed:
        return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__
    return (lines[0] if lines else type(exc).__name__)[:limit]
