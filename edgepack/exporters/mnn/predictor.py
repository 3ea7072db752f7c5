"""The MNN host predictor (CPU backend, fp32 compute) through MNN's Module API.

Inputs are fed in the source's layout (MNNConvert keeps an ONNX model's NCHW inputs); outputs MNN keeps in its
packed ``NC4HW4`` layout are converted back to NCHW. Given a ``batch``, a larger batch runs one slice at a time
(static-batch artifacts, and full-int8 ones, which run at the batch of one they were calibrated with).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import InputError
from edgepack.exporters.base import Arrays, Predictor

DEFAULT_THREADS = 2
_DTYPES = {np.dtype("float32"): "float", np.dtype("int32"): "int", np.dtype("uint8"): "uint8", np.dtype("int8"): "int8"}


def open_module(path: Path, inputs: list[str], outputs: list[str], threads: int) -> Any:
    """An MNN ``Module`` for the model at ``path`` on the CPU backend with ``threads`` threads, fp32 precision."""
    from edgepack.exporters.mnn.runtime import mnn, quiet_native

    nn = mnn().nn
    with quiet_native():
        manager = nn.create_runtime_manager(({"backend": "CPU", "precision": "high", "numThread": threads},))
        return nn.load_module_from_file(str(path), inputs, outputs, runtime_manager=manager)


class MnnPredictor(Predictor):
    """Runs a .mnn model; takes and returns the source's names and layout."""

    runtime_clock = "MNN Module.forward + output read, timed around the calls for the whole batch"

    def __init__(self, path: Path, inputs: list[str], outputs: list[str], *, batch: int | None,
                 threads: int = DEFAULT_THREADS) -> None:
        from edgepack.exporters.mnn.runtime import mnn

        self._expr = mnn().expr
        self.module = open_module(path, inputs, outputs, threads)
        self.input_names, self.output_names, self.batch = inputs, outputs, batch
        self._last_ms: float | None = None

    def _var(self, name: str, value: np.ndarray) -> Any:
        array = np.ascontiguousarray(value)
        if array.dtype == np.int64:
            array = array.astype(np.int32)  # MNNConvert stores int64 tensors as int32
        dtype = _DTYPES.get(array.dtype)
        if dtype is None:
            raise InputError(f"input '{name}': dtype {array.dtype} is not supported by MNN")
        F = self._expr
        return F.const(array, list(array.shape), F.NCHW, getattr(F, dtype))

    def _forward(self, inputs: Arrays) -> list[np.ndarray]:
        F = self._expr
        values = self.module.forward([self._var(n, inputs[n]) for n in self.input_names])
        values = values if isinstance(values, list) else [values]
        out = []
        for value in values:
            if value.data_format == F.NC4HW4:
                value = F.convert(value, F.NCHW)
            out.append(np.array(value.read(), copy=True))
        return out

    def __call__(self, inputs: Arrays) -> Arrays:
        missing = sorted(set(self.input_names) - set(inputs))
        if missing:
            raise InputError(f"missing input(s) {missing}; expected {sorted(self.input_names)}")
        total = len(np.asarray(inputs[self.input_names[0]])) if self.input_names else 0
        step = self.batch if self.batch and total > self.batch and total % self.batch == 0 else total
        started = time.perf_counter()
        parts = [self._forward({n: np.asarray(inputs[n])[i : i + step] for n in self.input_names})
                 for i in range(0, max(total, 1), max(step, 1))]
        self._last_ms = (time.perf_counter() - started) * 1000.0
        return {name: np.concatenate([p[k] for p in parts], axis=0) if len(parts) > 1 else parts[0][k]
                for k, name in enumerate(self.output_names)}

    def runtime_latency_ms(self) -> float | None:
        return self._last_ms
