"""The ncnn host predictor. ncnn blobs have no batch dim: each sample of a batch runs through its own extractor,
and the outputs are reshaped to the source's per-sample shape and stacked back along the batch axis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import InputError
from edgepack.exporters.base import Arrays, Artifact, Predictor
from edgepack.exporters.ncnn.options import runtime_options

DEFAULT_THREADS = 1
"""Threads of the parity/gate predictor and of calibration (ncnn2table also runs one thread per sample): ncnn's
OpenMP workers spin between layers and compete for busy cores, so one thread keeps these checks independent of the
host's load. The bench sets its own count (:data:`BENCH_THREADS` unless asked)."""
BENCH_THREADS = 2


def open_net(param: Path, weights: Path, precision: str, threads: int) -> Any:
    """An ``ncnn.Net`` loaded with the options :func:`runtime_options` gives ``precision``."""
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = threads
    for name, value in runtime_options(precision).items():
        setattr(net.opt, name, value)
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise InputError(f"ncnn cannot load {param.name} / {weights.name}")
    return net


def run_sample(net: Any, feed: dict[str, np.ndarray], blobs: list[str]) -> list[np.ndarray]:
    """One sample (blob name -> array without batch dim) through ``net``; the values of ``blobs``."""
    import ncnn

    with net.create_extractor() as extractor:
        if len(blobs) > 1:
            extractor.set_light_mode(False)  # keep intermediate blobs: each extract reuses what earlier ones computed
        for name, value in feed.items():
            extractor.input(name, ncnn.Mat(np.ascontiguousarray(value, dtype=np.float32)))
        values = []
        for blob in blobs:
            status, mat = extractor.extract(blob)
            if status != 0:
                raise InputError(f"ncnn could not compute blob '{blob}' (status {status})")
            values.append(np.array(mat, dtype=np.float32, copy=True))
    return values


class NcnnPredictor(Predictor):
    """Runs an ncnn model; takes and returns the source's names, shapes and batch layout."""

    runtime_clock = "ncnn Extractor input + extract, timed around the calls for the whole batch"

    def __init__(self, artifact: Artifact, *, threads: int = DEFAULT_THREADS) -> None:
        files = {f.suffix: f for f in artifact.files}
        self.net = open_net(artifact.path, files[".bin"], artifact.precision, threads)
        self.input_map: dict[str, dict[str, Any]] = artifact.settings["input_map"]
        self.output_map: dict[str, dict[str, Any]] = artifact.settings["output_map"]
        self._last_ms: float | None = None

    def __call__(self, inputs: Arrays) -> Arrays:
        missing = sorted(set(self.input_map) - set(inputs))
        if missing:
            raise InputError(f"missing input(s) {missing}; expected {sorted(self.input_map)}")
        count = len(next(iter(inputs.values())))
        blobs = [entry["name"] for entry in self.output_map.values()]
        rows: list[list[np.ndarray]] = []
        started = time.perf_counter()
        for index in range(count):
            feed = {entry["name"]: np.asarray(inputs[source])[index] for source, entry in self.input_map.items()}
            rows.append(run_sample(self.net, feed, blobs))
        self._last_ms = (time.perf_counter() - started) * 1000.0
        outputs = {}
        for position, (source, entry) in enumerate(self.output_map.items()):
            shape = entry["shape"]
            outputs[source] = np.concatenate([row[position].reshape(shape) for row in rows], axis=0)
        return outputs

    def runtime_latency_ms(self) -> float | None:
        return self._last_ms

    def close(self) -> None:
        self.net.clear()
