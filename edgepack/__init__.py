"""edgepack: compress, export, verify and bundle one trained model for many edge targets.

The public API lives in :mod:`edgepack.api` and is re-exported here lazily so that importing
``edgepack`` (and ``edgepack --help``) stays fast: the heavy toolchains load only when used.
"""

from __future__ import annotations

from typing import Any

from edgepack.version import __version__

__all__ = ["__version__", "export", "verify", "load_registry"]


def __getattr__(name: str) -> Any:
    if name in ("export", "verify"):
        from edgepack import api

        return getattr(api, name)
    if name == "load_registry":
        from edgepack.targets.registry import load_registry

        return load_registry
    raise AttributeError(f"module 'edgepack' has no attribute {name!r}")
