"""Group-wise weight-only quantization maths shared by the runtime adapters.

:func:`int8_backup_layers` ranks weight matrices by their relative int4 round-to-nearest error and
returns the ones to keep at 8 bits when a recipe's ``ratio`` < 1 (mixed int4/int8 weights).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def groupwise_error(weight: np.ndarray, *, bits: int, group_size: int, symmetric: bool, axis: int = 0) -> float:
    """Relative Frobenius error of round-to-nearest quantization in groups of ``group_size`` along ``axis``."""
    moved = np.moveaxis(weight.astype(np.float64), axis, 0)
    length = moved.shape[0]
    pad = (-length) % group_size
    if pad:
        moved = np.concatenate([moved, np.zeros((pad, *moved.shape[1:]))], axis=0)
    groups = moved.reshape(-1, group_size, *moved.shape[1:])
    levels = 2**bits - 1
    if symmetric:
        scale = np.abs(groups).max(axis=1, keepdims=True) / (levels // 2)
        scale[scale == 0] = 1.0
        restored = np.clip(np.round(groups / scale), -(levels // 2) - 1, levels // 2) * scale
    else:
        low, high = groups.min(axis=1, keepdims=True), groups.max(axis=1, keepdims=True)
        scale = (high - low) / levels
        scale[scale == 0] = 1.0
        restored = np.clip(np.round((groups - low) / scale), 0, levels) * scale + low
    norm = np.linalg.norm(groups)
    return float(np.linalg.norm(restored - groups) / norm) if norm else 0.0


def int8_backup_layers(
    weights: Mapping[str, np.ndarray], *, ratio: float, group_size: int, symmetric: bool, bits: int = 4
) -> list[str]:
    """Names of the ``round((1 - ratio) * n)`` layers with the largest low-bit error (ties: input order)."""
    count = int(round((1.0 - ratio) * len(weights)))
    if count <= 0:
        return []
    errors = [
        (-groupwise_error(w, bits=bits, group_size=group_size, symmetric=symmetric), index, name)
        for index, (name, w) in enumerate(weights.items())
    ]
    return [name for _, _, name in sorted(errors)[:count]]
