"""The :class:`Dataset` type and loaders for ``.npz`` / ``.npy`` files.

Arrays are stacked along a leading sample axis: ``inputs[name][i]`` is sample ``i`` of input ``name``
*without* its batch dim; :meth:`Dataset.batch` re-adds it where the model has it. That is axis 0 for most
inputs; an input whose batch is elsewhere (an LSTM state ``[2, batch, 128]``,
:attr:`~edgepack.models.source.TensorSpec.batch_axis`) is stored with its batch axis moved to the front and
carries that axis in :attr:`InputArrays.batch_axes`, so every copy of the inputs keeps it.

Files hold each input batched as the model takes it: ``N`` samples on the input's batch axis
(``input [N, 576]`` and ``state [2, N, 128]`` for Silero VAD).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import DataError
from edgepack.models.source import TensorSpec

LABEL_KEYS = ("labels", "label", "y")


class InputArrays(dict[str, np.ndarray]):
    """Input arrays by name, samples on axis 0, and the axis each input's batch has in the model
    (``batch_axes``: only inputs whose batch axis is not 0). A plain dict reads as all batch axes 0."""

    def __init__(self, arrays: Mapping[str, np.ndarray] = (), batch_axes: Mapping[str, int] | None = None) -> None:
        super().__init__(arrays)
        self.batch_axes: dict[str, int] = {k: int(v) for k, v in (batch_axes or {}).items() if v and k in self}

    def __reduce__(self) -> tuple[type, tuple[dict[str, np.ndarray], dict[str, int]]]:  # copies keep the axes
        return (InputArrays, (dict(self), self.batch_axes))


def to_model_layout(sample: np.ndarray, axis: int) -> np.ndarray:
    """A stored batch (samples on axis 0) in the model's layout: the sample axis moved to ``axis``."""
    return np.ascontiguousarray(np.moveaxis(sample, 0, axis)) if axis else sample


@dataclass(frozen=True)
class Dataset:
    """Model inputs (one array per input, samples on axis 0) and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    origin: str = "<memory>"

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, InputArrays):
            object.__setattr__(self, "inputs", InputArrays(self.inputs))
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

    @property
    def batch_axes(self) -> dict[str, int]:
        """Inputs whose batch axis in the model is not 0, and that axis."""
        return self.inputs.batch_axes  # type: ignore[attr-defined]

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Sample ``index`` as a batch of one in the model's layout, ready to feed to a predictor."""
        axes = self.batch_axes
        return {name: to_model_layout(array[index : index + 1], axes.get(name, 0)) for name, array in self.inputs.items()}

    def batches(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        for index in range(len(self) if limit is None else min(limit, len(self))):
            yield self.batch(index)

    def take(self, indices: Sequence[int] | slice) -> "Dataset":
        labels = None if self.labels is None else self.labels[indices]
        return Dataset(InputArrays({k: v[indices] for k, v in self.inputs.items()}, self.batch_axes), labels, self.origin)

    def concatenate(self, other: "Dataset", origin: str) -> "Dataset":
        """This dataset's samples followed by ``other``'s (same inputs; labels kept only when both have them)."""
        inputs = {k: np.concatenate([v, other.inputs[k].astype(v.dtype, copy=False)], axis=0) for k, v in self.inputs.items()}
        labels = None if self.labels is None or other.labels is None else np.concatenate([self.labels, other.labels])
        return Dataset(InputArrays(inputs, self.batch_axes), labels, origin)

    def split(self, first: int) -> tuple["Dataset", "Dataset"]:
        """The first ``first`` samples and the rest."""
        return self.take(slice(0, first)), self.take(slice(first, None))


def _check_finite(origin: str, name: str, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{origin}: input '{name}' contains {bad} NaN/inf value(s)", hint="clean the data")


def conform(origin: str, arrays: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> InputArrays:
    """Match loaded arrays to the model's input specs by name (or position for a single input).

    Each array holds ``N`` samples on the input's batch axis (:attr:`TensorSpec.batch_axis`; axis 0 for
    ``[N, *sample_shape]``) such that one sample on that axis fits the spec; it is stored samples-first.
    """
    if len(specs) == 1 and len(arrays) == 1 and specs[0].name not in arrays:
        arrays = {specs[0].name: next(iter(arrays.values()))}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise DataError(f"{origin}: no array for model input(s) {missing}", hint=f"found keys {sorted(arrays)}")
    out: dict[str, np.ndarray] = {}
    axes: dict[str, int] = {}
    for spec in specs:
        array = np.asarray(arrays[spec.name])
        axis = spec.batch_axis
        where = "batch first" if axis == 0 else f"batch on axis {axis}"
        if array.ndim == 0 or (array.ndim > axis and array.shape[axis] == 0):
            raise DataError(f"{origin}: input '{spec.name}' has no samples")
        if axis and array.ndim != len(spec.shape):
            raise DataError(f"{origin}: input '{spec.name}' has shape {list(array.shape)}, "
                            f"model expects {spec.shape_str()} ({where}, N samples on that axis)")
        array = np.moveaxis(array, axis, 0) if axis else array
        sample = to_model_layout(array[:1], axis)
        if not spec.matches(sample):
            shown = list(array.shape[1:]) if axis == 0 else list(sample.shape)
            raise DataError(
                f"{origin}: input '{spec.name}' samples have shape {shown}, "
                f"model expects {spec.shape_str()} ({where})"
            )
        _check_finite(origin, spec.name, array)
        out[spec.name] = np.ascontiguousarray(array.astype(spec.dtype, copy=False)) if axis else array.astype(spec.dtype, copy=False)
        axes[spec.name] = axis
    return InputArrays(out, axes)


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
