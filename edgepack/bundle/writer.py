"""Atomic bundle writing: everything goes into a staging directory beside the destination, then one
``rename`` puts it in place. An interrupted export leaves the previous bundle (if any) untouched."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Callable
from types import TracebackType
from typing import Any

from edgepack.bundle.hashing import canonical_json, hash_tree
from edgepack.errors import BundleError

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"


class BundleWriter:
    """Context manager that stages a bundle and commits it with :meth:`commit`.

    Leaving the ``with`` block without committing (an exception, SIGINT) removes the staging directory,
    and removes ``out_dir`` too when this writer created it and it is empty.
    """

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.staging: Path | None = None
        self._created_parent = False
        self._committed = False

    def __enter__(self) -> "BundleWriter":
        parent = self.destination.parent
        if not parent.exists():
            parent.mkdir(parents=True)
            self._created_parent = True
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", suffix=".tmp", dir=parent))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        if not self._committed and self._created_parent:
            try:
                self.destination.parent.rmdir()
            except OSError:
                pass

    def path(self, relative: str) -> Path:
        """A path inside the staging directory (parents created)."""
        assert self.staging is not None, "use BundleWriter as a context manager"
        target = (self.staging / relative).resolve()
        if not target.is_relative_to(self.staging.resolve()):
            raise BundleError(f"bundle path '{relative}' escapes the bundle")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add_file(self, source: Path, relative: str) -> Path:
        target = self.path(relative)
        shutil.copyfile(source, target)
        return target

    def add_json(self, relative: str, data: Any) -> Path:
        target = self.path(relative)
        target.write_bytes(canonical_json(data))
        return target

    def commit(
        self, manifest: dict[str, Any], signer: Callable[[bytes], bytes] | None = None, *, archive: bool = False
    ) -> Path:
        """Hash every staged file into ``manifest['files']``, write (and sign) the manifest, move into place.

        With ``archive`` the bundle is written as ``NAME.edgepack.zip`` beside the destination instead."""
        assert self.staging is not None, "use BundleWriter as a context manager"
        manifest = dict(manifest)
        manifest["files"] = hash_tree(self.staging, exclude=(MANIFEST_NAME, SIGNATURE_NAME))
        payload = canonical_json(manifest)
        (self.staging / MANIFEST_NAME).write_bytes(payload)
        if signer is not None:
            (self.staging / SIGNATURE_NAME).write_bytes(signer(payload))
        if archive:
            from edgepack.bundle.archive import pack

            folder = self.staging / self.destination.name
            folder.mkdir()
            for entry in list(self.staging.iterdir()):
                if entry != folder:
                    os.rename(entry, folder / entry.name)
            zipped = pack(folder, self.destination.with_name(self.destination.name + ".zip"))
            self._committed = True
            return zipped
        _fsync_tree(self.staging)
        self._replace(self.staging, self.destination)
        self._committed = True
        self.staging = None
        return self.destination

    @staticmethod
    def _replace(staging: Path, destination: Path) -> None:
        if destination.exists() and not (destination / MANIFEST_NAME).is_file():
            raise BundleError(f"{destination}: exists and is not an edgepack bundle; refusing to replace it")
        swap_into_place(staging, destination)


def swap_into_place(staging: Path, destination: Path) -> None:
    """Move the directory ``staging`` to ``destination`` (same filesystem), replacing an existing directory
    there: the old one is moved aside, the new one renamed in, the old one deleted; on failure the old
    one is put back. Readers see either the old or the new directory, never a mix."""
    if not destination.exists():
        os.rename(staging, destination)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent))
    os.rename(destination, retired / "previous")
    try:
        os.rename(staging, destination)
    except OSError:
        os.rename(retired / "previous", destination)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle}: not a bundle (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: manifest is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: manifest must be a JSON object")
    return data
