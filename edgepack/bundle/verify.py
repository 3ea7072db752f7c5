"""``edgepack verify``: re-hash every file of a bundle against its manifest."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepack.bundle.hashing import hash_tree
from edgepack.bundle.writer import MANIFEST_NAME, SIGNATURE_NAME, read_manifest
from edgepack.errors import BundleError

SUPPORTED_SCHEMA_VERSIONS = (1,)


@dataclass(frozen=True)
class VerifyResult:
    bundle: Path
    files_checked: int
    targets: list[str]
    signed: bool = False


def verify_bundle(bundle: Path, public_key: Path | None = None) -> VerifyResult:
    """Raise :class:`BundleError` naming the first changed, missing or extra file (or a bad signature when
    ``public_key`` is given); else return a summary. A ``.zip`` bundle is unpacked defensively first."""
    if bundle.is_file() and bundle.suffix == ".zip":
        return _verify_archive(bundle, public_key)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: bundle directory not found")
    manifest = read_manifest(bundle)
    version = manifest.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(f"{bundle}: unsupported manifest schema_version {version!r}")
    expected = manifest.get("files")
    if not isinstance(expected, dict):
        raise BundleError(f"{bundle}: manifest has no 'files' table")
    try:
        actual = hash_tree(bundle, exclude=(MANIFEST_NAME, SIGNATURE_NAME))
    except ValueError as exc:
        raise BundleError(f"{bundle}: {exc}") from None
    for relative in sorted(set(expected) | set(actual)):
        if relative not in actual:
            raise BundleError(f"{bundle}: missing file {relative}")
        if relative not in expected:
            raise BundleError(f"{bundle}: unexpected file {relative} (not in the manifest)")
        if actual[relative] != expected[relative]:
            raise BundleError(f"{bundle}: {relative} has been modified (sha256 mismatch)")
    if public_key is not None:
        from edgepack.bundle.signing import verify_signature

        verify_signature(bundle, public_key)
    return VerifyResult(bundle, len(actual), sorted(manifest.get("targets", {})), public_key is not None)


def _verify_archive(archive: Path, public_key: Path | None) -> VerifyResult:
    from edgepack.bundle.archive import unpack

    with tempfile.TemporaryDirectory(prefix="edgepack-verify-") as scratch:
        folder = unpack(archive, Path(scratch))
        result = verify_bundle(folder, public_key)
    return VerifyResult(archive, result.files_checked, result.targets, result.signed)
