"""The host predictor of an ``.rknn`` artifact: RKNN-Toolkit2's simulator, in the session that built it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgepack.exporters.base import Arrays, Artifact, Predictor
from edgepack.exporters.rknn.session import RUN_TIMEOUT_S, RknnSession


class RknnSimulatorPredictor(Predictor):
    """Runs the model one sample at a time (the ``.rknn`` is built for batch 1) on the toolkit's x86 simulator;
    inputs and outputs keep the source's names and layout."""

    proxy_for = "RKNN-Toolkit2's x86 simulator (the NPU's numerics; no latency)"

    def __init__(self, session: RknnSession, artifact: Artifact) -> None:
        self._session = session
        self._inputs = [spec.name for spec in artifact.inputs]
        self._outputs = [spec.name for spec in artifact.outputs]

    def __call__(self, inputs: Arrays) -> Arrays:
        arrays = [np.asarray(inputs[name], np.float32) for name in self._inputs]
        count = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
        parts: list[list[np.ndarray]] = []
        with tempfile.TemporaryDirectory(prefix="edgepack-rknn-") as scratch:
            for index in range(count):
                paths = []
                for position, array in enumerate(arrays):
                    path = Path(scratch) / f"in{position}.npy"
                    np.save(path, np.ascontiguousarray(array[index : index + 1]))
                    paths.append(str(path))
                reply = self._session.request({"op": "run", "inputs": paths, "out_dir": scratch}, RUN_TIMEOUT_S)
                parts.append([np.load(path) for path in reply["outputs"]])
        return {name: np.concatenate([part[i] for part in parts], axis=0).astype(np.float32)
                for i, name in enumerate(self._outputs)}


class RknnLitePredictor(Predictor):
    """Runs the ``.rknn`` on the board's NPU with ``rknn_toolkit_lite2`` (``rknnlite.api.RKNNLite``): what the
    SSH runner's agent uses on an RK3588 board. One sample at a time, in the source's names and layout."""

    def __init__(self, artifact: Artifact) -> None:
        from rknnlite.api import RKNNLite

        self._rknn = RKNNLite(verbose=False)
        self._inputs = [spec.name for spec in artifact.inputs]
        self._outputs = [spec.name for spec in artifact.outputs]
        for step, call in (("load_rknn", lambda: self._rknn.load_rknn(str(artifact.path))),
                           ("init_runtime", lambda: self._rknn.init_runtime(core_mask=RKNNLite.NPU_CORE_AUTO))):
            if call() != 0:
                self._rknn.release()
                raise RuntimeError(f"RKNNLite {step} failed for {artifact.path}")

    def __call__(self, inputs: Arrays) -> Arrays:
        arrays = [np.asarray(inputs[name], np.float32) for name in self._inputs]
        count = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
        parts = []
        for index in range(count):
            sample = [np.ascontiguousarray(array[index : index + 1]) for array in arrays]
            outputs = self._rknn.inference(inputs=sample, data_format=["nchw" if a.ndim == 4 else "nhwc" for a in sample])
            if outputs is None:
                raise RuntimeError("RKNNLite inference returned no outputs")
            parts.append([np.asarray(value) for value in outputs])
        return {name: np.concatenate([part[i] for part in parts], axis=0).astype(np.float32)
                for i, name in enumerate(self._outputs)}

    def close(self) -> None:
        self._rknn.release()
