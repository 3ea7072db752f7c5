"""File hashing and the canonical JSON encoding of manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgepack.hashing import file_sha256


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
            hashes[relative] = file_sha256(path)
    return hashes
