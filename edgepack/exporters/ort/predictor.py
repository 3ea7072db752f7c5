"""The ONNX Runtime host predictor (CPU execution provider), with the thread count the bench controls."""

from __future__ import annotations

import time
from pathlib import Path

from edgepack.exporters.base import Arrays, Predictor

DEFAULT_THREADS = 2


class OrtPredictor(Predictor):
    """Runs an ONNX file in an ONNX Runtime CPU session (names are the source's own)."""

    runtime_clock = "onnxruntime InferenceSession.run, timed around the call (onnxruntime_perf_test's clock)"

    def __init__(self, path: Path, *, threads: int = DEFAULT_THREADS, optimize: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._last_ms: float | None = None

    def __call__(self, inputs: Arrays) -> Arrays:
        started = time.perf_counter()
        outputs = self.session.run(self.output_names, inputs)
        self._last_ms = (time.perf_counter() - started) * 1000.0
        return dict(zip(self.output_names, outputs))

    def runtime_latency_ms(self) -> float | None:
        return self._last_ms
