"""PyTorch -> Core ML mlprogram conversion: ``torch.jit.trace`` first, ``torch.export`` as the alternate path.

Both paths go through ``coremltools.convert`` (mlprogram, fp16 or fp32 compute, the profile's minimum
deployment target). When both fail, the error names the torch ops coremltools could not translate on each
path. Two translations are registered here because coremltools 9 lacks or mistranslates them:

* ``int`` (TorchScript): coremltools casts a constant-folded length-1 tensor with ``int(array)``, which
  NumPy 2 rejects ("only 0-dimensional arrays can be converted to Python scalars"); Hugging Face BERT-style
  models (MiniLM) hit it in the embeddings. The override takes the single element first.
* ``new_ones`` (torch.export): not translated at all; it is ``fill`` with 1 of the source tensor's kind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.exporters.coreml.graph import import_coremltools
from edgepack.errors import ExportError
from edgepack.models.source import ModelSource, TensorSpec

MAX_FLEXIBLE_BATCH = 64
"""Upper bound of a flexible (symbolic) dim in the Core ML input description."""
ENUMERATED_BATCHES = (1, 2, 4, 8, 16, 32, 64)
"""Batch sizes offered when a single input has a symbolic batch (EnumeratedShapes, ANE-friendlier than ranges)."""
_UNSUPPORTED = (
    re.compile(r"converting '([\w.:]+)' op"),
    re.compile(r"Unsupported fx node ([\w.:]+)"),
    re.compile(r"PyTorch convert function for op '([\w.:]+)' not implemented"),
)
_registered = False


@dataclass(frozen=True)
class Converted:
    """A converted (not yet compressed) Core ML model and the path that produced it."""

    model: Any
    """``coremltools.models.MLModel`` (mlprogram, not loaded for prediction)."""
    converter: str
    failures: tuple[str, ...] = ()
    """Why earlier paths failed (empty when the first path worked)."""
    dynamic: bool = False
    """Whether symbolic source dims stayed flexible (EnumeratedShapes / RangeDim) in the model description."""


def register_translations() -> None:
    """Register edgepack's torch-op translations with coremltools (idempotent)."""
    global _registered
    if _registered:
        return
    import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op
    from coremltools.converters.mil.mil import types

    stock_int = torch_ops._int

    @register_torch_op(torch_alias=["int"], override=True)
    def _int(context: Any, node: Any) -> None:
        """``int(tensor)``: a constant length-1 tensor folds to its one element (NumPy-2 safe)."""
        x = torch_ops._get_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const() and np.ndim(x.val) > 0 and np.size(x.val) == 1:
            context.add(mb.const(val=int(np.asarray(x.val).reshape(()).item()), name=node.name))
            return
        stock_int(context, node)

    @register_torch_op(override=True)
    def new_ones(context: Any, node: Any) -> None:
        """``tensor.new_ones(size, dtype=...)``: a constant when the size is known (a scalar for ``[]``), else
        ``fill`` with 1; the dtype is the ``dtype`` argument's, else the source tensor's."""
        from coremltools.converters.mil.frontend.torch.utils import NUM_TO_NUMPY_DTYPE

        inputs = torch_ops._get_inputs(context, node, min_expected=2)
        source, shape = inputs[0], inputs[1]
        dtype_arg = inputs[2] if len(inputs) > 2 else None
        if dtype_arg is not None and dtype_arg.val is not None:
            dtype = np.dtype(NUM_TO_NUMPY_DTYPE[int(dtype_arg.val)])
        else:
            dtype = np.dtype(types.nptype_from_builtin(source.dtype))
        dtype = {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.float32)}.get(dtype, dtype)
        parts = list(shape) if isinstance(shape, (list, tuple)) else [shape]
        if all(part.val is not None for part in parts):
            dims = [int(d) for part in parts for d in np.atleast_1d(part.val)] if isinstance(shape, (list, tuple)) \
                else [int(d) for d in np.atleast_1d(shape.val)]
            context.add(mb.const(val=np.ones(dims, dtype=dtype) if dims else dtype.type(1), name=node.name))
            return
        if isinstance(shape, (list, tuple)):
            shape = mb.concat(values=list(shape), axis=0)
        context.add(mb.fill(shape=mb.cast(x=shape, dtype="int32"), value=dtype.type(1).item(), name=node.name))

    _registered = True


def unsupported_ops(message: str) -> list[str]:
    """Torch op names a coremltools conversion error names as untranslatable."""
    return sorted({match for pattern in _UNSUPPORTED for match in pattern.findall(message)})


def _example_args(source: ModelSource) -> tuple:
    import torch

    from edgepack.models.sample import example_inputs

    arrays = example_inputs(source.inputs, batch=1, seed=0)
    return tuple(torch.from_numpy(arrays[s.name]) for s in source.inputs)


def _tensor_types(specs: list[TensorSpec], dynamic: bool) -> list[Any]:
    """Core ML input descriptions: source names, float32/int32 dtypes, flexible dims where the profile allows."""
    ct = import_coremltools()

    single = len(specs) == 1 and sum(not isinstance(d, int) for d in specs[0].shape) == 1
    types = []
    for spec in specs:
        dtype = np.float32 if spec.dtype.startswith("float") else np.int32
        if not dynamic or spec.is_static:
            shape: Any = spec.concrete_shape(1)
        elif single:
            shape = ct.EnumeratedShapes(shapes=[
                [b if not isinstance(d, int) else d for d in spec.shape] for b in ENUMERATED_BATCHES
            ], default=list(spec.concrete_shape(1)))
        else:
            shape = tuple(d if isinstance(d, int) else ct.RangeDim(1, MAX_FLEXIBLE_BATCH, 1) for d in spec.shape)
        types.append(ct.TensorType(name=spec.name, shape=shape, dtype=dtype))
    return types


def _convert(model: Any, source: ModelSource, deployment_target: Any, fp16: bool, dynamic: bool) -> Any:
    ct = import_coremltools()

    outputs = [ct.TensorType(name=s.name, dtype=np.float32 if s.dtype.startswith("float") else None)
               for s in source.outputs]
    return ct.convert(
        model, inputs=_tensor_types(source.inputs, dynamic), outputs=outputs, convert_to="mlprogram",
        minimum_deployment_target=deployment_target,
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
    )


def _via_trace(source: ModelSource, deployment_target: Any, fp16: bool, dynamic: bool) -> Any:
    import torch

    traced = torch.jit.trace(source.torch_module.eval(), _example_args(source), strict=False)
    return _convert(traced, source, deployment_target, fp16, dynamic)


def _via_export(source: ModelSource, deployment_target: Any, fp16: bool, dynamic: bool) -> Any:
    import torch

    program = source.exported_program
    if program is None:
        program = torch.export.export(source.torch_module.eval(), _example_args(source))
    # torch.export programs are converted static (coremltools reads their own dynamic-shape constraints only)
    return _convert(program.run_decompositions({}), source, deployment_target, fp16, False)


PATHS = (("torch.jit.trace", _via_trace), ("torch.export", _via_export))
"""Conversion paths in the order they are tried."""
FLEXIBLE_PATHS = frozenset({"torch.jit.trace"})
"""Paths that keep symbolic dims flexible (torch.export programs are converted with static shapes)."""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet(collect: _Collect) -> Any:
    """coremltools and torch.jit print progress bars and warnings; errors (which name the failing op) are kept."""
    logger = logging.getLogger("coremltools")
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [collect], False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def convert(source: ModelSource, deployment_target: Any, *, fp16: bool, dynamic: bool) -> Converted:
    """Convert a torch ``source`` to an mlprogram, trying :data:`PATHS` in order.

    Raises :class:`ExportError` naming every path's failure and the unsupported torch ops it hit."""
    if source.torch_module is None and source.exported_program is None:
        raise ExportError(f"Core ML conversion needs a PyTorch source; {source.uri} is {source.kind}")
    register_translations()
    failures: list[str] = []
    for name, path in PATHS:
        if name == "torch.jit.trace" and source.torch_module is None:
            continue
        collect = _Collect()
        try:
            with _quiet(collect):
                model = path(source, deployment_target, fp16, dynamic)
                return Converted(model, name, tuple(failures), dynamic and name in FLEXIBLE_PATHS)
        except Exception as exc:  # noqa: BLE001 - converter failures are collected and reported together
            text = str(exc).strip() or type(exc).__name__
            ops = unsupported_ops("\n".join([str(exc), _log_tail(exc), *collect.messages]))
            detail = f"unsupported ops: {', '.join(ops)}; " if ops else ""
            failures.append(f"{name}: {detail}{type(exc).__name__}: {text.splitlines()[0][:240]}")
    raise ExportError(f"Core ML conversion of {source.uri} failed on every path: " + " | ".join(failures))


def _log_tail(exc: BaseException) -> str:
    """coremltools names the failing op in a log line and in chained exceptions' messages."""
    parts = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(parts) < 4:
        parts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)
