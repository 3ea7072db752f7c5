"""Stable identities: SHA-256 of files and of torch modules' weights."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def module_sha256(module: Any) -> str:
    """Hash of a torch module's class name and state dict (names, dtypes, shapes, bytes), in key order."""
    import torch

    digest = hashlib.sha256(type(module).__qualname__.encode())
    for key, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(array.dtype).encode())
        digest.update(str(tuple(array.shape)).encode())
        digest.update(array.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()
