"""File hashing and the canonical JSON encoding of manifests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgepack.hashing import file_sha256


def canonical_json(data: Any) -> bytes:
    """Sorted keys, fixed separators, UTF-8, trailing newline: the same manifest gives the same bytes.

    JSON has no NaN/Infinity: a non-finite measurement (e.g. a relative error against an all-zero
    reference) is written as ``null``, so every manifest stays readable by strict parsers."""
    return (json.dumps(_finite(data), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


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
