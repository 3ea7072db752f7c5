"""Loading the code ``edgepack package`` generates (shared by the packaging and per-runtime tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def import_generated(path: Path) -> ModuleType:
    """Import the generated module at ``path`` under a name unique to the file (two packages never collide)."""
    spec = importlib.util.spec_from_file_location(f"generated_{path.stem}_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
