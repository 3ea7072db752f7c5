"""The :class:`Dataset` type and loaders for ``.npz`` / ``.npy`` files.

Arrays are stacked along a leading sample axis: ``inputs[name][i]`` is sample ``i`` of input ``name``
*without* its batch dim; :meth:`Dataset.batch` re-adds it.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import DataError
from edgepack.models.source import TensorSpec

LABEL_KEYS = ("labels", "label", "y")


@dataclass(frozen=True)
class Dataset:
    """Model inputs (one array per input, samples on axis 0) and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    origin: str = "<memory>"

    def __post_init__(self) -> None:
        lengths = {len(a) for a in self.inputs.values()}
        if len(lengths) > 1:
            raise DataError(f"{self.origin}: inputs have different sample counts {sorted(lengths)}")
        if self.labels is not None and len(self.labels) != len(self):
            raise DataError(f"{self.origin}: {len(self.labels)} labels for {len(self)} samples")

    def sha256(self) -> str:
        """Content hash of every input array (name, dtype, shape, bytes) and the labels, for cache keys."""
        digest = hashlib.sha256()
        arrays = sorted(self.inputs.items()) + ([("labels", self.labels)] if self.labels is not None else [])
        for name, array in arrays:
            array = np.ascontiguousarray(array)
            digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Sample ``index`` as a batch of one, ready to feed to a predictor."""
        return {name: array[index : index + 1] for name, array in self.inputs.items()}

    def batches(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        for index in range(len(self) if limit is None else min(limit, len(self))):
            yield self.batch(index)

    def take(self, indices: Sequence[int] | slice) -> "Dataset":
        labels = None if self.labels is None else self.labels[indices]
        return Dataset({k: v[indices] for k, v in self.inputs.items()}, labels, self.origin)

    def split(self, first: int) -> tuple["Dataset", "Dataset"]:
        """The first ``first`` samples and the rest."""
        return self.take(slice(0, first)), self.take(slice(first, None))

    def to_raw_pixels(self, specs: Sequence[TensorSpec]) -> "Dataset":
        """The inputs named by ``specs`` (float images preprocessed as ``spec.preprocess`` says) back as raw
        ``uint8`` NHWC pixels: ``(x * std + mean) / scale`` -> round -> clip 0..255 -> uint8 -> NHWC (for
        ``--bake-preprocess``, :mod:`edgepack.models.bake`); other inputs are kept as they are."""
        from edgepack.models.bake import _layout, channel_params

        inputs = dict(self.inputs)
        for spec in specs:
            if spec.name not in inputs:
                continue
            array = np.asarray(inputs[spec.name], np.float32)
            scale, mean, std = channel_params(spec)
            if _layout(spec) == "NCHW":
                array = array.transpose(0, 2, 3, 1)
            raw = (array * std + mean) / np.float32(scale)
            inputs[spec.name] = np.ascontiguousarray(np.clip(np.rint(raw), 0, 255).astype(np.uint8))
        return Dataset(inputs, self.labels, f"{self.origin} (raw uint8 pixels)")


def _check_finite(origin: str, name: str, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{origin}: input '{name}' contains {bad} NaN/inf value(s)", hint="clean the data")


def conform(origin: str, arrays: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Match loaded arrays to the model's input specs by name (or position for a single input).

    Each array must be ``[N, *sample_shape]`` where ``[1, *sample_shape]`` fits the spec (a spec without
    a batch dim of 1/symbolic gets its samples stacked on a new axis).
    """
    if len(specs) == 1 and len(arrays) == 1 and specs[0].name not in arrays:
        arrays = {specs[0].name: next(iter(arrays.values()))}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise DataError(f"{origin}: no array for model input(s) {missing}", hint=f"found keys {sorted(arrays)}")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        array = np.asarray(arrays[spec.name])
        if len(array) == 0:
            raise DataError(f"{origin}: input '{spec.name}' has no samples")
        sample = array[:1]
        if not spec.matches(sample):
            raise DataError(
                f"{origin}: input '{spec.name}' samples have shape {list(array.shape[1:])}, "
                f"model expects {spec.shape_str()} (batch first)"
            )
        _check_finite(origin, spec.name, array)
        out[spec.name] = array.astype(spec.dtype, copy=False)
    return out


def load_dataset(path: str | Path, specs: Sequence[TensorSpec], *, require_labels: bool = False) -> Dataset:
    """Load ``.npz`` (one array per input name, optional ``labels``) or ``.npy`` (single input)."""
    origin = str(path)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{origin}: data file not found")
    try:
        if path.suffix == ".npy":
            arrays = {"__single__": np.load(path, allow_pickle=False)}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        else:
            raise DataError(f"{origin}: unsupported data format '{path.suffix}'", hint="use .npz or .npy")
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{origin}: cannot read data: {exc}") from None
    labels = None
    for key in LABEL_KEYS:
        if key in arrays:
            labels = np.asarray(arrays.pop(key))
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{origin}: '{key}' must be a 1-D integer array")
            break
    if require_labels and labels is None:
        raise DataError(f"{origin}: no 'labels' array", hint="add integer class labels under the key 'labels'")
    return Dataset(conform(origin, arrays, specs), labels, origin)
