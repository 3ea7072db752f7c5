"""Registers the built-in compression passes (explicitly, in one place)."""

from __future__ import annotations
