"""Atomic bundle writing: everything goes into a staging directory beside the destination, then one atomic
swap puts it in place (:func:`edgepack._fs.swap_into_place`). An interrupted or killed export leaves the
previous bundle (if any) untouched; only a directory edgepack wrote itself is ever replaced
(:func:`is_edgepack_bundle`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from collections.abc import Callable
from types import TracebackType
from typing import Any

from edgepack._faults import fault_point
from edgepack._fs import fsync_dir, fsync_tree, make_temp_dir, recover_retired, sweep_stale, swap_into_place
from edgepack.bundle.hashing import canonical_json, hash_tree
from edgepack.errors import BundleError, OutputError

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
STAGING_SUFFIX = ".tmp"
SUPPORTED_SCHEMA_VERSIONS = (1,)


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
        self.staging = make_temp_dir(staging_prefix(self.destination), parent, STAGING_SUFFIX)
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
            from edgepack.bundle.archive import is_bundle_archive, pack

            zipped = self.destination.with_name(self.destination.name + ".zip")
            if zipped.exists() and (zipped.is_symlink() or not zipped.is_file() or not is_bundle_archive(zipped)):
                raise OutputError(f"{zipped}: exists and is not a bundle archive edgepack wrote; refusing to replace it",
                                  hint="move it away or choose another --out or --name")
            folder = self.staging / self.destination.name
            folder.mkdir()
            for entry in list(self.staging.iterdir()):
                if entry != folder:
                    os.rename(entry, folder / entry.name)
            fault_point("bundle.staged")
            pack(folder, zipped)
            self._committed = True
            return zipped
        fsync_tree(self.staging)
        fault_point("bundle.staged")
        check_replaceable(self.destination)
        swap_into_place(self.staging, self.destination)
        fsync_dir(self.destination.parent)
        self._committed = True
        self.staging = None
        return self.destination


def staging_prefix(destination: Path) -> str:
    """Name prefix of the staging directories of ``destination`` (``.NAME.edgepack.<pid>.<random>.tmp``)."""
    return f".{destination.name}."


def prepare_destination(destination: Path) -> list[Path]:
    """Before an export writes ``destination`` (with its lock held): put back a bundle a killed swap left
    aside, refuse a destination edgepack did not write, and remove staging directories of killed exports.
    Returns what was removed."""
    recover_retired(destination)
    check_replaceable(destination)
    removed = sweep_stale(destination.parent, staging_prefix(destination), STAGING_SUFFIX, all_owners=True)
    return removed + sweep_stale(destination.parent, f".{destination.name}.zip.", STAGING_SUFFIX, all_owners=True)


def check_replaceable(destination: Path) -> None:
    """Raise :class:`OutputError` unless ``destination`` is absent or a bundle edgepack wrote."""
    if destination.is_symlink() or (destination.exists() and not destination.is_dir()):
        raise OutputError(f"{destination}: exists and is not a bundle directory; refusing to replace it",
                          hint="choose another --out or --name")
    if destination.exists() and not is_edgepack_bundle(destination):
        raise OutputError(f"{destination}: exists and is not a bundle edgepack wrote (no edgepack manifest, or "
                          "files the manifest does not list); refusing to replace it",
                          hint="move it away or choose another --out or --name")


def is_edgepack_bundle(folder: Path) -> bool:
    """True when ``folder`` holds an edgepack manifest (a supported ``schema_version``, ``created_by``
    edgepack, a ``files`` table) and no file that table does not list: what edgepack wrote and nothing of
    the user's. File contents are not compared (a damaged bundle of ours may still be replaced)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("schema_version") not in SUPPORTED_SCHEMA_VERSIONS:
        return False
    if not str(manifest.get("created_by", "")).startswith("edgepack ") or not isinstance(manifest.get("files"), dict):
        return False
    listed = set(manifest["files"]) | {MANIFEST_NAME, SIGNATURE_NAME}
    try:
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()}
    except OSError:
        return False
    return present <= listed


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
