"""File hashing and the canonical JSON encoding of manifests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(data: Any) -> bytes:
    """Sorted keys, fixed separators, UTF-8, trailing newline: the same manifest gives the same bytes."""
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def hash_tree(root: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """``{posix relative path: sha256}`` for every regular file under ``root`` (symlinks are refused)."""
    hashes: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative in exclude:
            continue
        if path.is_symlink():
            raise ValueError(f"{relative}: symbolic links are not allowed in a bundle")
        if path.is_file():
            hashes[relative] = sha256_file(path)
    return hashes
