"""Ed25519 signatures over a bundle's canonical ``manifest.json`` (which holds every file's SHA-256).

Keys are PEM files: the private key (PKCS#8, written with mode 0600) and ``KEY.pub`` (SubjectPublicKeyInfo).
"""

from __future__ import annotations

import os
from pathlib import Path

from edgepack.bundle.writer import SIGNATURE_NAME
from edgepack.errors import InputError, TamperedError


def generate_keypair(path: Path) -> tuple[Path, Path]:
    """Write a new private key to ``path`` and its public key to ``path.pub``; refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = path.with_name(path.name + ".pub")
    for target in (path, public):
        if target.exists():
            raise InputError(f"{target}: already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    public.write_bytes(public_pem)
    return path, public


def _load(path: Path, *, private: bool) -> object:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if not path.is_file():
        raise InputError(f"{path}: key file not found")
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, None) if private else serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        kind = "private" if private else "public"
        raise InputError(f"{path}: not a PEM {kind} key: {exc}") from None
    expected = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, expected):
        raise InputError(f"{path}: not an Ed25519 key")
    return key


def load_signer(path: Path) -> "Signer":
    """Load a private key now (so a bad key fails before any export work) and return a signer."""
    return Signer(_load(path, private=True))


class Signer:
    """Signs manifest bytes with an Ed25519 private key."""

    def __init__(self, key: object) -> None:
        self._key = key

    def __call__(self, manifest: bytes) -> bytes:
        return self._key.sign(manifest)  # type: ignore[attr-defined]


def verify_signature(bundle: Path, public_key: Path, *, label: Path | None = None) -> None:
    """Raise :class:`TamperedError` unless ``manifest.sig`` is a valid signature of ``manifest.json``
    (``label`` names the bundle in the message, e.g. the ``.zip`` it was unpacked from)."""
    from cryptography.exceptions import InvalidSignature

    key = _load(public_key, private=False)
    name = label or bundle
    signature = bundle / SIGNATURE_NAME
    if not signature.is_file():
        raise TamperedError(f"{name}: not signed (no {SIGNATURE_NAME}) but --pub was given")
    try:
        key.verify(signature.read_bytes(), (bundle / "manifest.json").read_bytes())  # type: ignore[attr-defined]
    except InvalidSignature:
        raise TamperedError(f"{name}: signature does not match {public_key} (wrong key or modified manifest)") from None
