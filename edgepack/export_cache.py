"""Per-target export cache: identical inputs give the same manifest entry and byte-identical files.

The key is the SHA-256 of everything that decides a target's outcome: edgepack's version, the source's
identity (weights hash, user code hash, I/O specs), the validated profile, every recipe of its chain, the
exporter's toolchain versions (plus the torch/ONNX export stack), the calibration and evaluation data
contents, and the gate settings. A hit replays the recorded entry (measured numbers included) and files;
any change misses. Only successful targets are stored. The cache is best effort: a cache that cannot be
read or written is skipped, never an export failure.

Location: ``$EDGEPACK_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgepack``, else ``~/.cache/edgepack``.
``EDGEPACK_CACHE=off`` (or ``--no-cache`` / ``cache=False``) disables it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edgepack import __version__
from edgepack.compress.recipe import RecipeBook
from edgepack.models.source import ModelSource
from edgepack.targets.schema import TargetProfile

CACHE_DIR_ENV = "EDGEPACK_CACHE_DIR"
CACHE_SWITCH_ENV = "EDGEPACK_CACHE"
EXPORT_STACK = ("torch", "torchvision", "timm", "transformers", "onnx", "onnxscript", "onnxslim", "numpy")
"""Packages every exporter's input goes through (the ONNX hub export), keyed besides each exporter's own."""
ENTRY_FILE = "entry.json"
FILES_DIR = "files"


def default_cache_dir() -> Path | None:
    """Where the cache lives, or ``None`` when ``EDGEPACK_CACHE=off``."""
    if os.environ.get(CACHE_SWITCH_ENV, "").strip().lower() in {"0", "off", "false", "no"}:
        return None
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgepack"


@dataclass(frozen=True)
class CachedTarget:
    """A replayable target: its manifest entry and its files (bundle-relative path -> cached file)."""

    entry: dict[str, Any]
    files: dict[str, Path]


def _versions(distributions: Sequence[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in sorted(set(distributions)):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def target_key(
    source: ModelSource,
    profile: TargetProfile,
    recipes: RecipeBook,
    toolchain: Sequence[str],
    data: Mapping[str, str | None],
    settings: Mapping[str, Any],
) -> str:
    """The cache key of one target's export (hex SHA-256 of a canonical JSON document); ``data`` maps each
    dataset's role to its :meth:`edgepack.data.dataset.Dataset.sha256` (hashed once per export, not per target)."""
    document = {
        "edgepack": __version__,
        "source": {**source.describe(), "code_sha256": source.code_sha256},
        "profile": profile.model_dump(mode="json"),
        # fp32 is always built too: it is the latency baseline every compressed artifact is compared with.
        "recipes": [recipes.get(name).model_dump(mode="json") for name in dict.fromkeys([*profile.recipes, "fp32"])
                    if name in recipes.recipes],
        "toolchain": _versions([*EXPORT_STACK, *toolchain]),
        "data": dict(sorted(data.items())),
        "settings": dict(settings),
    }
    payload = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(payload).hexdigest()


class ExportCache:
    """A directory of ``<key>/entry.json`` + ``<key>/files/<bundle-relative path>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str) -> CachedTarget | None:
        """The cached target for ``key``, or ``None`` (absent, incomplete or unreadable)."""
        folder = self.root / "targets" / key
        try:
            entry = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
            listed = entry.pop("_files")
            files = {relative: folder / FILES_DIR / relative for relative in listed}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not all(path.is_file() for path in files.values()):
            return None
        return CachedTarget(entry, files)

    def put(self, key: str, entry: Mapping[str, Any], files: Mapping[str, Path]) -> None:
        """Store a target (atomically: a half-written entry is never visible); errors are ignored."""
        folder = self.root / "targets" / key
        if folder.exists():
            return
        staging: Path | None = None
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", suffix=".tmp", dir=folder.parent))
            for relative, path in files.items():
                target = staging / FILES_DIR / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            document = {**entry, "_files": sorted(files)}
            (staging / ENTRY_FILE).write_text(json.dumps(document, sort_keys=True), encoding="utf-8")
            os.rename(staging, folder)
            staging = None
        except OSError:
            pass
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
