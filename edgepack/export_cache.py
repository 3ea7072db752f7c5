"""Per-target export cache: identical inputs give the same manifest entry and byte-identical files.

The key is the SHA-256 of everything that decides a target's outcome: edgepack's version, the source's
identity (weights hash, user code hash, I/O specs), the validated profile, every recipe of its chain, the
exporter's toolchain versions (plus the torch/ONNX export stack), the calibration and evaluation data
contents, and the gate settings. A hit replays the recorded entry (measured numbers included) and files;
any change misses. Only successful targets are stored. The cache is best effort: a cache that cannot be
read or written is skipped, never an export failure.

Entries are verified on every hit: ``entry.json`` records the SHA-256 of every cached file and of the entry
document itself, and the artifact record carries its own hash; a truncated, bit-flipped, missing or extra
file (or an edited entry) evicts the entry with one warning and the target is exported again. ``put`` writes
to a temp name owned by this process, fsyncs, then renames into place, replacing a damaged entry; temp
names left by killed processes are swept at the start of the next export.

Location: ``$EDGEPACK_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgepack``, else ``~/.cache/edgepack``.
``EDGEPACK_CACHE=off`` (or ``--no-cache`` / ``cache=False``) disables it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edgepack.version import __version__
from edgepack._faults import fault_point
from edgepack._fs import fsync_dir, fsync_tree, make_temp_dir, remove_path, swap_into_place, sweep_stale
from edgepack.bundle.hashing import canonical_json
from edgepack.bundle.verify import artifact_digest
from edgepack.hashing import file_sha256
from edgepack.compress.recipe import RecipeBook
from edgepack.models.source import ModelSource
from edgepack.targets.schema import TargetProfile

CACHE_DIR_ENV = "EDGEPACK_CACHE_DIR"
CACHE_SWITCH_ENV = "EDGEPACK_CACHE"
EXPORT_STACK = ("torch", "torchvision", "timm", "transformers", "onnx", "onnxscript", "onnxslim", "numpy")
"""Packages every exporter's input goes through (the ONNX hub export), keyed besides each exporter's own."""
ENTRY_FILE = "entry.json"
FILES_DIR = "files"
TEMP_SUFFIX = ".tmp"
log = logging.getLogger("edgepack")


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
        # labels travel in every artifact's contract (--labels replaces the source's own)
        "source": {**source.describe(), "code_sha256": source.code_sha256, "labels": source.labels},
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


class CacheDamage(ValueError):
    """A cache entry whose files or document no longer match what was recorded."""


class ExportCache:
    """A directory of ``targets/<key>/entry.json`` + ``targets/<key>/files/<bundle-relative path>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.targets = root / "targets"

    def sweep(self) -> list[Path]:
        """Remove temp entries and evicted folders left by processes that no longer run."""
        return sweep_stale(self.targets, ".", TEMP_SUFFIX)

    def get(self, key: str) -> CachedTarget | None:
        """The verified cached target for ``key``, or ``None``: absent or unreadable (a miss), or damaged
        (evicted with a warning naming what was wrong)."""
        folder = self.targets / key
        if not folder.exists():
            return None
        try:
            return _load(folder)
        except CacheDamage as exc:
            log.warning("export cache entry %s is damaged (%s); evicted, exporting again", key[:12], exc)
            self._evict(folder)
        except OSError:
            pass
        return None

    def put(self, key: str, entry: Mapping[str, Any], files: Mapping[str, Path]) -> None:
        """Store a target: written under a temp name, fsynced, renamed into place (a half-written entry is
        never visible); an existing damaged entry is replaced. Errors are ignored."""
        folder = self.targets / key
        if folder.exists():
            try:
                _load(folder)
                return  # already cached and intact
            except (CacheDamage, OSError):
                pass
        staging: Path | None = None
        try:
            self.targets.mkdir(parents=True, exist_ok=True)
            staging = make_temp_dir(".", self.targets, TEMP_SUFFIX)
            hashes: dict[str, str] = {}
            for relative, path in sorted(files.items()):
                target = staging / FILES_DIR / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with path.open("rb") as reader, target.open("wb") as writer:
                    digest = hashlib.sha256()
                    for chunk in iter(lambda: reader.read(1 << 20), b""):
                        digest.update(chunk)
                        writer.write(chunk)
                hashes[relative] = digest.hexdigest()
            document = {**entry, "_files": hashes, "_entry_sha256": _entry_digest(entry)}
            (staging / ENTRY_FILE).write_bytes(canonical_json(document))
            fsync_tree(staging)
            fault_point("cache.staged")
            swap_into_place(staging, folder)
            fsync_dir(self.targets)
            staging = None
        except OSError:
            pass
        finally:
            if staging is not None:
                remove_path(staging)

    def _evict(self, folder: Path) -> None:
        try:  # renamed first, so a half-deleted entry is never read as one
            doomed = make_temp_dir(".", self.targets, TEMP_SUFFIX)
            os.rename(folder, doomed / "evicted")
        except OSError:
            remove_path(folder)
            return
        remove_path(doomed)


def _entry_digest(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(entry))).hexdigest()


def _load(folder: Path) -> CachedTarget:
    """Read and verify one entry; :class:`CacheDamage` names the first thing that does not match."""
    try:
        document = json.loads((folder / ENTRY_FILE).read_bytes())
    except FileNotFoundError:
        raise CacheDamage(f"{ENTRY_FILE} is missing") from None
    except ValueError:
        raise CacheDamage(f"{ENTRY_FILE} is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("_files"), dict):
        raise CacheDamage(f"{ENTRY_FILE} has no file table (written by an older edgepack)")
    hashes: dict[str, str] = document.pop("_files")
    recorded = document.pop("_entry_sha256", None)
    if recorded != _entry_digest(document):
        raise CacheDamage(f"{ENTRY_FILE} was modified")
    root = folder / FILES_DIR
    files = {relative: root / relative for relative in hashes}
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()} if root.is_dir() else set()
    for relative in sorted(set(hashes) | present):
        path = root / relative
        if relative not in hashes:
            raise CacheDamage(f"unexpected file {relative}")
        if not path.is_file() or path.is_symlink():
            raise CacheDamage(f"{relative} is missing")
        if file_sha256(path) != hashes[relative]:
            raise CacheDamage(f"{relative} does not match its recorded sha256")
    artifact = document.get("artifact")
    if isinstance(artifact, Mapping) and artifact.get("sha256") != artifact_digest(str(artifact.get("path")), hashes):
        raise CacheDamage(f"artifact {artifact.get('path')} does not match the artifact's recorded sha256")
    return CachedTarget(document, files)
