"""The ExecuTorch host predictor: the ``.pte`` run by ExecuTorch's Python runtime (XNNPACK delegate and the
portable kernels, as on the phone), with the XNNPACK thread pool size the bench controls."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgepack.exporters.base import Arrays, Predictor
from edgepack.models.source import TensorSpec

DEFAULT_THREADS = 2


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Import ExecuTorch without the deprecation warning torchao (which it imports) logs through torch's
    pytree logger on first import."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def set_threads(threads: int) -> None:
    """Resize ExecuTorch's process-wide thread pool (what XNNPACK's kernels run on)."""
    with quiet_import():
        from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)


class ExecutorchPredictor(Predictor):
    """Runs a ``.pte``'s ``forward`` with inputs and outputs in the program's positional order, named with
    ``inputs``/``outputs`` (the source's names: the program keeps the source's order and layout). A batch
    larger than the program's planned batch of 1 runs one sample at a time."""

    runtime_clock = "executorch Method.execute, timed around the call (executor_runner's clock)"

    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        with quiet_import():
            from executorch.runtime import Runtime

        self.program = Runtime.get().load_program(Path(path))
        self.method = self.program.load_method("forward")
        self.inputs = tuple(inputs)
        self.output_names = [spec.name for spec in outputs]
        self._batch_axes = [spec.batch_axis for spec in outputs]
        self._planned = tuple(self.method.metadata.input_tensor_meta(0).sizes()) if inputs else ()
        self._last_ms: float | None = None

    def __call__(self, inputs: Arrays) -> Arrays:
        """One ``execute`` per sample when the batch is larger than the program's static batch of 1."""
        first = self.inputs[0]
        planned = self._planned
        given = np.shape(inputs[first.name])
        if not first.shape or given == planned or len(given) != len(planned) or planned[first.batch_axis] != 1:
            return self._run(inputs)
        count = given[first.batch_axis]
        parts = [self._run({s.name: np.take(inputs[s.name], [i], axis=s.batch_axis) for s in self.inputs})
                 for i in range(count)]
        return {name: np.concatenate([p[name] for p in parts], axis=axis)
                for name, axis in zip(self.output_names, self._batch_axes)}

    def _run(self, inputs: Arrays) -> Arrays:
        import torch

        feeds = [torch.from_numpy(np.ascontiguousarray(inputs[spec.name])) for spec in self.inputs]
        started = time.perf_counter()
        results = self.method.execute(feeds)
        self._last_ms = (time.perf_counter() - started) * 1000.0
        return {name: value.numpy().copy() for name, value in zip(self.output_names, results)}

    def runtime_latency_ms(self) -> float | None:
        return self._last_ms
