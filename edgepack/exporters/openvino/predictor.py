"""The OpenVINO host predictor (CPU plugin, float32 inference precision), with the thread count the bench
controls."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.exporters.base import Arrays, Predictor

DEFAULT_THREADS = 2


class OpenVinoPredictor(Predictor):
    """Runs an IR on OpenVINO's CPU plugin with float32 inference precision (no silent bf16)."""

    runtime_clock = "openvino InferRequest.latency (benchmark_app's clock)"

    def __init__(self, xml: Path, *, threads: int = DEFAULT_THREADS) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        model = core.read_model(str(xml))
        # Output names from the IR: compiling can fuse an output's producer (e.g. Shape -> Cast) and give its
        # port a second, internal name that get_any_name() may pick.
        names = [port.get_any_name() for port in model.outputs]
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._tensor = ov.Tensor
        self._inputs = {name: port for port in self.compiled.inputs for name in port.get_names()}
        self._outputs = list(zip(names, self.compiled.outputs))
        self.output_names = [name for name, _ in self._outputs]

    def __call__(self, inputs: Arrays) -> Arrays:
        # Zero-copy inputs and cached ports: the per-call cost is what device_bench measures on small models.
        for name, array in inputs.items():
            self.request.set_tensor(self._inputs[name], self._tensor(np.ascontiguousarray(array), shared_memory=True))
        self.request.infer()
        return {name: self.request.get_tensor(port).data.copy() for name, port in self._outputs}

    def runtime_latency_ms(self) -> float | None:
        return float(self.request.latency)
