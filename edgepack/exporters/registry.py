"""Finds exporters through the ``edgepack.exporters`` entry-point group (runtime name -> class)."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata

from edgepack.errors import UnsupportedError
from edgepack.exporters.base import Exporter

ENTRY_POINT_GROUP = "edgepack.exporters"


@lru_cache(maxsize=1)
def available_runtimes() -> dict[str, metadata.EntryPoint]:
    """Runtime name -> entry point, without importing any exporter module."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found and found[entry.name].value != entry.value:
            raise UnsupportedError(
                f"two exporters claim runtime '{entry.name}': {found[entry.name].value} and {entry.value}"
            )
        found[entry.name] = entry
    return found


def get_exporter(runtime: str) -> Exporter:
    """Instantiate the exporter for ``runtime`` or raise a clear "not yet supported" error."""
    entry = available_runtimes().get(runtime)
    if entry is None:
        known = ", ".join(sorted(available_runtimes())) or "none"
        raise UnsupportedError(
            f"runtime '{runtime}' is not yet supported by this edgepack build", hint=f"supported runtimes: {known}"
        )
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Exporter)) or cls.runtime != runtime:
        raise UnsupportedError(f"entry point '{entry.value}' does not provide an Exporter for runtime '{runtime}'")
    return cls()
