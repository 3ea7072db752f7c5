"""Opening a bundle safely: ``edgepack verify``, and the first step of ``bench``, ``package`` and ``diff``.

:func:`open_bundle` accepts a bundle directory or its ``.zip`` (unpacked defensively into edgepack's own temp
dir), re-hashes every file against the manifest's ``files`` table, cross-checks each target's artifact record
against that table (its files live under ``artifacts/<target>/`` and are listed; its ``sha256`` is the
listed file's hash; its ``format`` is one its exporter declares), and checks ``manifest.sig`` when a public key is given
(a bundle without a signature is then refused). Any mismatch is a :class:`~edgepack.errors.TamperedError`
(exit 1, whatever the container); a path that is not a bundle is an :class:`~edgepack.errors.InputError`.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgepack.bundle.hashing import hash_tree
from edgepack.bundle.writer import MANIFEST_NAME, SIGNATURE_NAME, SUPPORTED_SCHEMA_VERSIONS
from edgepack.errors import BundleError, InputError, TamperedError, environment_failure


@dataclass(frozen=True)
class VerifyResult:
    bundle: Path
    files_checked: int
    targets: list[str]
    signed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "files_checked": self.files_checked, "targets": self.targets,
                "signature_checked": self.signed}


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose files all match its manifest: ``root`` is the directory to read them from (a temp
    directory for a ``.zip``, valid inside :func:`open_bundle`'s block)."""

    path: Path
    root: Path
    manifest: dict[str, Any]
    files_checked: int
    signed: bool


def verify_bundle(bundle: Path, public_key: Path | None = None) -> VerifyResult:
    """Raise naming the first changed, missing or extra file, inconsistent artifact record or bad signature;
    else return a summary."""
    with open_bundle(bundle, public_key) as opened:
        return VerifyResult(Path(bundle), opened.files_checked, sorted(opened.manifest.get("targets", {})), opened.signed)


@contextmanager
def open_bundle(bundle: str | Path, public_key: str | Path | None = None) -> Iterator[VerifiedBundle]:
    """Verify ``bundle`` (a directory, or a ``.zip`` written by ``export --archive``) and yield it."""
    path = Path(bundle)
    key = Path(public_key) if public_key is not None else None
    if path.is_file() and path.suffix == ".zip":
        with _unpacked(path) as folder:
            yield _verified(path, folder, key)
        return
    if not path.exists():
        raise InputError(f"{path}: bundle not found", hint="give a NAME.edgepack directory or its .zip")
    if not path.is_dir():
        raise InputError(f"{path}: not a bundle (expected a NAME.edgepack directory or a .zip archive)")
    yield _verified(path, path, key)


@contextmanager
def _unpacked(archive: Path) -> Iterator[Path]:
    from edgepack.bundle.archive import unpack

    try:
        with tempfile.TemporaryDirectory(prefix="edgepack-bundle-") as scratch:
            try:
                yield unpack(archive, Path(scratch))
            except zipfile.BadZipFile as exc:  # a CRC mismatch while extracting: the archive was modified
                raise TamperedError(f"{archive}: archive is damaged or modified: {exc}") from None
    except OSError as exc:
        raise environment_failure(exc, f"unpacking {archive}") from None


def _verified(path: Path, root: Path, public_key: Path | None) -> VerifiedBundle:
    manifest = _read_manifest(path, root)
    expected = manifest["files"]
    try:
        actual = hash_tree(root, exclude=(MANIFEST_NAME, SIGNATURE_NAME))
    except ValueError as exc:
        raise TamperedError(f"{path}: {exc}") from None
    for relative in sorted(set(expected) | set(actual)):
        if relative not in actual:
            raise TamperedError(f"{path}: missing file {relative}")
        if relative not in expected:
            raise TamperedError(f"{path}: unexpected file {relative} (not in the manifest)")
        if actual[relative] != expected[relative]:
            raise TamperedError(f"{path}: {relative} has been modified (sha256 mismatch)")
    for target, entry in sorted((manifest.get("targets") or {}).items()):
        problem = artifact_problem(target, entry, expected)
        if problem is not None:
            raise TamperedError(f"{path}: target '{target}': {problem}")
    if public_key is not None:
        from edgepack.bundle.signing import verify_signature

        verify_signature(root, public_key, label=path)
    return VerifiedBundle(path, root, manifest, len(actual), public_key is not None)


def _read_manifest(path: Path, root: Path) -> dict[str, Any]:
    from edgepack.bundle.writer import read_manifest

    try:
        manifest = read_manifest(root)
    except BundleError as exc:
        if not (root / MANIFEST_NAME).is_file():
            raise InputError(f"{path}: not a bundle (no {MANIFEST_NAME})") from None
        raise TamperedError(str(exc).replace(str(root), str(path))) from None
    version = manifest.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise TamperedError(f"{path}: unsupported manifest schema_version {version!r}")
    if not isinstance(manifest.get("files"), dict):
        raise TamperedError(f"{path}: manifest has no 'files' table")
    return manifest


def artifact_problem(target: str, entry: Any, files: Mapping[str, str]) -> str | None:
    """Why ``entry``'s artifact record disagrees with the bundle's ``files`` table, or ``None``.

    The record must name files under ``artifacts/<target>/`` that the table lists, its main ``path`` among
    them (or, for a directory artifact such as ``.mlpackage``, the folder holding some of them), with the
    ``sha256`` the table implies, in a format the target runtime's exporter declares, named as that format is."""
    if not isinstance(entry, Mapping):
        return "entry is not an object"
    artifact = entry.get("artifact")
    if artifact is None:
        return None
    if not isinstance(artifact, Mapping) or not isinstance(artifact.get("files"), list):
        return "artifact record has no file list"
    prefix = f"artifacts/{target}/"
    main = artifact.get("path")
    for name in [main, *artifact["files"]]:
        if not isinstance(name, str) or not name.startswith(prefix):
            return f"artifact file {name!r} is not under {prefix}"
    for name in artifact["files"]:
        if name not in files:
            return f"artifact file {name} is not in the manifest's files table"
    digest = artifact_digest(main, files)
    if digest is None or main not in artifact["files"] and not any(f.startswith(main + "/") for f in artifact["files"]):
        return f"artifact path {main} is not one of the target's files"
    if artifact.get("sha256") != digest:
        return f"artifact sha256 does not match {main} (recorded {str(artifact.get('sha256'))[:12]}, file {digest[:12]})"
    profile = entry.get("profile") if isinstance(entry.get("profile"), Mapping) else {}
    formats = _declared_formats(profile.get("runtime"))
    if formats is None:
        return None  # a runtime this install does not have: its formats cannot be checked here
    fmt = artifact.get("format")
    if fmt not in formats:
        return f"artifact format {fmt!r} is not one the {profile.get('runtime')} exporter writes ({', '.join(sorted(formats))})"
    if not main.endswith(formats[fmt]):
        return f"artifact path {main} does not end in {formats[fmt]}, as a {fmt} artifact does"
    return None


def artifact_digest(main: str, files: Mapping[str, str]) -> str | None:
    """The ``artifact.sha256`` a bundle's ``files`` table implies: the main file's hash, or for a directory
    artifact the hash of its sorted ``relative\\0sha256`` lines."""
    if main in files:
        return files[main]
    inside = sorted(((name[len(main) + 1:], sha) for name, sha in files.items() if name.startswith(main + "/")),
                    key=lambda item: PurePosixPath(item[0]).parts)  # the order Path sorting gives
    if not inside:
        return None
    digest = hashlib.sha256()
    for relative, sha in inside:
        digest.update(f"{relative}\0{sha}\n".encode())
    return digest.hexdigest()


def _declared_formats(runtime: Any) -> dict[str, str] | None:
    from edgepack.exporters.registry import available_runtimes

    entry = available_runtimes().get(str(runtime))
    if entry is None:
        return None
    return dict(getattr(entry.load(), "artifact_formats", {})) or None
