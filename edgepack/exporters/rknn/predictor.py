"""Host and board predictors of an ``.rknn`` artifact: RKNN-Toolkit2's simulator in the session that built it, or
the board's NPU through ``rknn_toolkit_lite2``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgepack.exporters.base import Arrays, Artifact, Predictor
from edgepack.exporters.rknn.session import RUN_TIMEOUT_S, RknnSession


class _PerSample(Predictor):
    """Runs the model one sample at a time (an ``.rknn`` is built for batch 1); inputs and outputs keep the
    source's names and layout. Subclasses run one sample: ``_run_one(arrays) -> outputs in order``."""

    def __init__(self, artifact: Artifact) -> None:
        self._inputs = [spec.name for spec in artifact.inputs]
        self._outputs = [spec.name for spec in artifact.outputs]

    def _run_one(self, sample: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, inputs: Arrays) -> Arrays:
        arrays = [np.asarray(inputs[name], np.float32) for name in self._inputs]
        count = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
        parts = [self._run_one([np.ascontiguousarray(a[i : i + 1]) for a in arrays]) for i in range(count)]
        return {name: np.concatenate([part[i] for part in parts], axis=0).astype(np.float32)
                for i, name in enumerate(self._outputs)}


class RknnSimulatorPredictor(_PerSample):
    """The toolkit's x86 simulator, through the worker session that built the model."""

    proxy_for = "RKNN-Toolkit2's x86 simulator (the NPU's numerics; no latency)"

    def __init__(self, session: RknnSession, artifact: Artifact) -> None:
        super().__init__(artifact)
        self._session = session

    def _run_one(self, sample: list[np.ndarray]) -> list[np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="edgepack-rknn-") as scratch:
            paths = []
            for position, array in enumerate(sample):
                path = Path(scratch) / f"in{position}.npy"
                np.save(path, array)
                paths.append(str(path))
            reply = self._session.request({"op": "run", "inputs": paths, "out_dir": scratch}, RUN_TIMEOUT_S)
            return [np.load(path) for path in reply["outputs"]]


class RknnLitePredictor(_PerSample):
    """Runs the ``.rknn`` on the board's NPU with ``rknn_toolkit_lite2`` (``rknnlite.api.RKNNLite``): what the
    SSH runner's agent uses on an RK3588 board."""

    def __init__(self, artifact: Artifact) -> None:
        from rknnlite.api import RKNNLite

        super().__init__(artifact)
        self._rknn = RKNNLite(verbose=False)
        for step, call in (("load_rknn", lambda: self._rknn.load_rknn(str(artifact.path))),
                           ("init_runtime", lambda: self._rknn.init_runtime(core_mask=RKNNLite.NPU_CORE_AUTO))):
            if call() != 0:
                self._rknn.release()
                raise RuntimeError(f"RKNNLite {step} failed for {artifact.path}")

    def _run_one(self, sample: list[np.ndarray]) -> list[np.ndarray]:
        outputs = self._rknn.inference(inputs=sample, data_format=["nchw" if a.ndim == 4 else "nhwc" for a in sample])
        if outputs is None:
            raise RuntimeError("RKNNLite inference returned no outputs")
        return [np.asarray(value) for value in outputs]

    def close(self) -> None:
        self._rknn.release()
