"""The .tflite side of the TFLite exporter: reading a model's I/O, mapping the source's tensors onto it,
and the host :class:`TflitePredictor` (LiteRT interpreter) that speaks the source's names, layout and
float values.

Mapping (``settings["input_map"]`` / ``settings["output_map"]``): source tensor name ->
``{"name", "position", "perm"}`` with ``artifact = source.transpose(perm)``. onnx2tf moves 4-D/5-D inputs
(and possibly 3-5-D outputs) to channel-last; litert-torch keeps the source layout.

Quantized I/O (full-integer models): an int8/uint8/int16 input with quantization parameters receives
``round(x / scale) + zero_point`` (saturated) when the caller passes floats; integer outputs with
parameters are returned as ``scale * (q - zero_point)``. Parity and the gate therefore compare float
values with the source, whatever the artifact's I/O dtype.

Only ``ai_edge_litert`` is imported here (lazily); it does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ExportError
from edgepack.exporters.base import Arrays, Predictor
from edgepack.models.source import QuantParams, TensorSpec

DEFAULT_THREADS = 2
CHANNEL_LAST = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}
"""Permutation onnx2tf applies to channel-first inputs of each rank (``artifact = source.transpose(p)``)."""
CHANNEL_LAST_LAYOUT = {3: "NWC", 4: "NHWC", 5: "NDHWC"}
TRANSPOSED_INPUT_RANKS = (4, 5)
"""Input ranks onnx2tf may move to channel-last; 3-D inputs (usually sequences) keep their layout."""
QUANTIZED_IO_DTYPES = ("int8", "uint8", "int16")

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Interpreter construction
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the duration of the block, then restore it.

    LiteRT's C++ side writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` straight to fd 2
    when the default delegate is applied (at the first tensor allocation), which Python's
    ``sys.stderr`` redirection cannot catch; the CLI promises one line on stderr per failure. What was
    captured is logged at DEBUG level.
    """
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (daemonised): nothing to protect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured = sink.read().decode("utf-8", "replace").strip()
            if captured:
                _log.debug("LiteRT: %s", captured)


def open_interpreter(path: Path, threads: int) -> Any:
    """A LiteRT interpreter with its tensors allocated (so the default XNNPACK delegate is applied now,
    quietly, rather than at the first inference).

    The default op resolver (``AUTO``: builtin kernels + XNNPACK) is kept on purpose, for int8 models too;
    see :mod:`edgepack.exporters.tflite_quant` for what was measured.
    """
    from ai_edge_litert.interpreter import Interpreter

    with _native_stderr_captured():
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
    return interpreter


# --------------------------------------------------------------------------------------------------
# Reading a .tflite model's I/O and its operators
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TfliteTensor:
    """One input or output of a .tflite model as the LiteRT interpreter reports it."""

    name: str
    """Signature key when the model has a signature, else the tensor name."""
    position: int
    shape: tuple[int, ...]
    dtype: str
    quant: QuantParams | None = None


@dataclass(frozen=True)
class TfliteIO:
    """Inputs and outputs of a .tflite model, and the signature they were read from (if any)."""

    signature: str | None
    inputs: tuple[TfliteTensor, ...]
    outputs: tuple[TfliteTensor, ...]


def _quant_params(details: dict[str, Any]) -> QuantParams | None:
    """Per-tensor quantization of an I/O tensor (``None`` for float tensors and unquantized integers)."""
    scale, zero_point = details.get("quantization", (0.0, 0))
    return QuantParams(float(scale), int(zero_point)) if scale else None


def _tensor(name: str, position: int, details: dict[str, Any]) -> TfliteTensor:
    shape = tuple(int(d) for d in details["shape"])
    return TfliteTensor(name, position, shape, np.dtype(details["dtype"]).name, _quant_params(details))


def _pick_signature(signatures: dict[str, Any]) -> str | None:
    if not signatures:
        return None
    return "serving_default" if "serving_default" in signatures else sorted(signatures)[0]


def read_tflite_io(path: Path) -> TfliteIO:
    """Load ``path`` with the LiteRT interpreter and read its I/O (signature runner when present).

    Tensors are allocated, so a model the interpreter cannot prepare (e.g. an int8 kernel whose
    quantization parameters overflow) fails here.
    """
    interpreter = open_interpreter(path, threads=1)
    signature = _pick_signature(interpreter.get_signature_list())
    if signature is not None:
        runner = interpreter.get_signature_runner(signature)
        inputs = [_tensor(n, i, d) for i, (n, d) in enumerate(runner.get_input_details().items())]
        outputs = [_tensor(n, i, d) for i, (n, d) in enumerate(runner.get_output_details().items())]
    else:
        inputs = [_tensor(d["name"], i, d) for i, d in enumerate(interpreter.get_input_details())]
        outputs = [_tensor(d["name"], i, d) for i, d in enumerate(interpreter.get_output_details())]
    return TfliteIO(signature, tuple(inputs), tuple(outputs))


def tflite_operators(path: Path) -> list[str]:
    """Operator names used by a .tflite file: builtin names (``CONV_2D``) and custom codes (``FlexErf``)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    operators: list[str] = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        custom = code.CustomCode()
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        operators.append(custom.decode() if custom else names.get(builtin, f"BUILTIN_{builtin}"))
    return operators


def flex_ops(path: Path) -> list[str]:
    """The TF Select (``Flex*``) ops a .tflite file needs; empty for a builtin-only model."""
    return sorted({op for op in tflite_operators(path) if op.startswith("Flex")})


def check_loadable(path: Path) -> None:
    """Fail the path (so the alternate one is tried) when LiteRT cannot load the file (e.g. Flex ops)."""
    try:
        read_tflite_io(path)
    except Exception as exc:  # noqa: BLE001 - any interpreter failure disqualifies the file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"the LiteRT interpreter cannot load {path.name}: {first}") from None


# --------------------------------------------------------------------------------------------------
# Mapping the source's tensors onto the .tflite model
# --------------------------------------------------------------------------------------------------


def _identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def _candidate_perms(rank: int, converter: str) -> list[tuple[int, ...]]:
    """Permutations an output of ``rank`` may have undergone (onnx2tf may leave 3-5-D outputs channel-last)."""
    if converter == "onnx2tf" and rank in CHANNEL_LAST:
        return [CHANNEL_LAST[rank], _identity(rank)]
    return [_identity(rank)]


def input_perms(spec: TensorSpec, converter: str) -> list[tuple[int, ...]]:
    """The permutation the converter was asked to apply to this input first, then identity."""
    rank = len(spec.shape)
    if converter == "onnx2tf" and rank in TRANSPOSED_INPUT_RANKS:
        return [CHANNEL_LAST[rank], _identity(rank)]
    return [_identity(rank)]


def _transposed_shape(shape: Sequence[int], perm: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape[p] for p in perm)


def match_inputs(specs: Sequence[TensorSpec], tensors: Sequence[TfliteTensor], converter: str) -> dict[str, Any]:
    """source input name -> {"name", "position", "perm"}.

    onnx2tf keeps the ONNX input names, so inputs are matched by name (position as a fallback);
    litert-torch names them ``args_N`` in the source's order, so they are matched by position.
    """
    lookup = {t.name: t for t in tensors} if converter == "onnx2tf" else {}
    mapping: dict[str, Any] = {}
    for index, spec in enumerate(specs):
        tensor = lookup.get(spec.name)
        if tensor is None:
            if index >= len(tensors):
                raise ExportError(f"the .tflite model has {len(tensors)} input(s), the source {len(specs)}")
            tensor = tensors[index]
        shape = spec.concrete_shape(1)
        perm = next((p for p in input_perms(spec, converter) if _transposed_shape(shape, p) == tensor.shape), None)
        if perm is None:
            raise ExportError(
                f"input '{spec.name}' {list(shape)} does not fit .tflite input '{tensor.name}' {list(tensor.shape)}"
            )
        mapping[spec.name] = {"name": tensor.name, "position": tensor.position, "perm": list(perm)}
    return mapping


def output_candidates(
    spec: TensorSpec, tensors: Sequence[TfliteTensor], converter: str
) -> list[tuple[TfliteTensor, tuple[int, ...]]]:
    shape = spec.concrete_shape(1)
    return [
        (tensor, perm)
        for tensor in tensors
        for perm in _candidate_perms(len(shape), converter)
        if len(tensor.shape) == len(shape) and _transposed_shape(shape, perm) == tensor.shape
    ]


def _relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    actual = actual.astype(np.float64)
    scale = max(float(np.max(np.abs(reference))) if reference.size else 0.0, 1e-12)
    return float(np.max(np.abs(reference - actual))) / scale if reference.size else 0.0


def match_outputs(
    specs: Sequence[TensorSpec],
    tensors: Sequence[TfliteTensor],
    converter: str,
    probe: tuple[Arrays, Arrays] | None,
) -> dict[str, Any]:
    """source output name -> {"name", "position", "perm"}.

    Candidates must fit the shape (as is, or channel-last for 3-5-D); among several, the one whose
    values are closest to the source's on a probe input wins (``probe`` = (source outputs, tflite
    outputs keyed by tflite name)), else the first in the model's output order.
    """
    used: set[str] = set()
    mapping: dict[str, Any] = {}
    for spec in specs:
        candidates = [(t, p) for t, p in output_candidates(spec, tensors, converter) if t.name not in used]
        if not candidates:
            shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in tensors)
            raise ExportError(
                f"source output '{spec.name}' {spec.shape_str()} has no matching .tflite output ({shapes})"
            )
        if probe is not None and len(candidates) > 1:
            reference, actual = probe
            candidates.sort(
                key=lambda c: _relative_error(np.transpose(reference[spec.name], c[1]), actual[c[0].name])
            )
        tensor, perm = candidates[0]
        used.add(tensor.name)
        mapping[spec.name] = {"name": tensor.name, "position": tensor.position, "perm": list(perm)}
    return mapping


def ambiguous_outputs(specs: Sequence[TensorSpec], io: TfliteIO, converter: str) -> bool:
    return any(len(output_candidates(spec, io.outputs, converter)) > 1 for spec in specs)


def _layout(spec: TensorSpec, perm: Sequence[int]) -> str | None:
    if list(perm) == list(range(len(perm))):
        return spec.layout
    return CHANNEL_LAST_LAYOUT.get(len(perm), spec.layout)


def artifact_specs(
    specs: Sequence[TensorSpec], tensors: Sequence[TfliteTensor], mapping: dict[str, Any], *, keep_preprocess: bool
) -> list[TensorSpec]:
    """The .tflite's own I/O specs, in the source's order (preprocessing carried over for inputs; the
    quantization parameters of integer I/O recorded)."""
    by_name = {t.name: t for t in tensors}
    out = []
    for spec in specs:
        entry = mapping[spec.name]
        tensor = by_name[entry["name"]]
        preprocess = spec.preprocess if keep_preprocess else None
        layout = _layout(spec, entry["perm"])
        out.append(TensorSpec(tensor.name, tensor.shape, tensor.dtype, layout, preprocess, tensor.quant))
    return out


def _inverse(perm: Sequence[int]) -> list[int]:
    return [int(i) for i in np.argsort(perm)]


# --------------------------------------------------------------------------------------------------
# Quantized I/O
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Affine:
    """Precomputed float <-> integer conversion of one I/O tensor (the predictor runs it every call)."""

    dtype: np.dtype
    inverse_scale: np.float32
    scale: np.float32
    zero_point: np.float32
    low: float
    high: float

    @classmethod
    def of(cls, quant: QuantParams, dtype: np.dtype | str) -> "_Affine":
        info = np.iinfo(dtype)
        return cls(np.dtype(dtype), np.float32(1.0 / quant.scale), np.float32(quant.scale),
                   np.float32(quant.zero_point), float(info.min), float(info.max))

    def quantize(self, values: np.ndarray) -> np.ndarray:
        ratio = np.multiply(values, self.inverse_scale, dtype=np.float32)
        ratio += np.copysign(np.float32(0.5), ratio)  # half away from zero, as LiteRT's QUANTIZE kernel
        np.trunc(ratio, out=ratio)
        ratio += self.zero_point
        np.clip(ratio, self.low, self.high, out=ratio)
        return ratio.astype(self.dtype)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        real = np.subtract(values, self.zero_point, dtype=np.float32)
        real *= self.scale
        return real


def quantize(values: np.ndarray, quant: QuantParams, dtype: np.dtype | str) -> np.ndarray:
    """``round(values / scale) + zero_point`` saturated to ``dtype``, rounding half away from zero as
    LiteRT's own QUANTIZE kernel does (in float32, in place: the host predictor's overhead stays small
    next to the model)."""
    return _Affine.of(quant, dtype).quantize(values)


def dequantize(values: np.ndarray, quant: QuantParams) -> np.ndarray:
    """``scale * (q - zero_point)`` as float32."""
    return _Affine.of(quant, np.asarray(values).dtype).dequantize(values)


def _io_affine(details: dict[str, Any]) -> _Affine | None:
    """Conversion of an integer I/O tensor with quantization parameters from/to float (else ``None``)."""
    dtype = np.dtype(details["dtype"])
    quant = _quant_params(details)
    if dtype.name not in QUANTIZED_IO_DTYPES or quant is None:
        return None
    return _Affine.of(quant, dtype)


# --------------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------------


class TflitePredictor(Predictor):
    """Runs a .tflite artifact with the LiteRT interpreter, in the source's names, layout and float values.

    Inputs are transposed per ``settings["input_map"]`` (and quantized when the artifact input is an
    integer tensor with quantization parameters and the caller passes floats); outputs are dequantized
    the same way and transposed back per ``settings["output_map"]``. A batch larger than the artifact's
    static batch is run one slice at a time and concatenated.
    """

    def __init__(self, path: Path, settings: dict[str, Any], threads: int = DEFAULT_THREADS) -> None:
        self._interpreter = open_interpreter(path, threads)
        self._input_map: dict[str, Any] = settings["input_map"]
        self._output_map: dict[str, Any] = settings["output_map"]
        signature = settings.get("signature")
        self._runner = self._interpreter.get_signature_runner(signature) if signature else None
        if self._runner is not None:
            details = self._runner.get_input_details()
            self._input_details = {m["name"]: details[m["name"]] for m in self._input_map.values()}
            self._output_details = dict(self._runner.get_output_details())
        else:
            inputs = self._interpreter.get_input_details()
            self._input_details = {m["name"]: inputs[m["position"]] for m in self._input_map.values()}
            self._output_details = {d["name"]: d for d in self._interpreter.get_output_details()}
        self._input_affine = {name: _io_affine(d) for name, d in self._input_details.items()}
        self._output_affine = {name: _io_affine(d) for name, d in self._output_details.items()}

    def _static_batch(self) -> int | None:
        """The artifact's fixed batch size (leading dim of its first input), if it has one."""
        for details in self._input_details.values():
            shape = tuple(int(d) for d in details["shape"])
            return shape[0] if shape and shape[0] > 0 else None
        return None

    def __call__(self, inputs: Arrays) -> Arrays:
        missing = [name for name in self._input_map if name not in inputs]
        if missing:
            raise KeyError(f"missing input(s) {missing}; expected {sorted(self._input_map)}")
        arrays = {name: np.asarray(inputs[name]) for name in self._input_map}
        step = self._static_batch()
        first = next(iter(arrays.values()), None)
        total = first.shape[0] if first is not None and first.ndim else None
        if step is None or total is None or total == step or total % step:
            return self._run_once(arrays)
        parts = [self._run_once({k: v[i : i + step] for k, v in arrays.items()}) for i in range(0, total, step)]
        return {name: np.concatenate([part[name] for part in parts], axis=0) for name in self._output_map}

    def _feeds(self, arrays: Arrays) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for source_name, entry in self._input_map.items():
            name = entry["name"]
            dtype = self._input_details[name]["dtype"]
            value = np.transpose(arrays[source_name], entry["perm"])
            affine = self._input_affine[name]
            if affine is not None and np.issubdtype(value.dtype, np.floating):
                value = affine.quantize(value)
            feeds[name] = np.ascontiguousarray(value, dtype=dtype)
        return feeds

    def _real(self, name: str, value: np.ndarray) -> np.ndarray:
        affine = self._output_affine.get(name)
        return np.asarray(value) if affine is None else affine.dequantize(value)

    def run_raw(self, arrays: Arrays) -> Arrays:
        """One static batch: source-keyed inputs in, the artifact's own outputs (names, layout) out, as
        real values (integer outputs dequantized)."""
        feeds = self._feeds(arrays)
        if self._runner is not None:
            return {name: self._real(name, value) for name, value in self._runner(**feeds).items()}
        for name, value in feeds.items():
            self._interpreter.set_tensor(self._input_details[name]["index"], value)
        self._interpreter.invoke()
        return {
            name: self._real(name, self._interpreter.get_tensor(details["index"]))
            for name, details in self._output_details.items()
        }

    def _run_once(self, arrays: Arrays) -> Arrays:
        raw = self.run_raw(arrays)
        return {
            source_name: np.transpose(np.asarray(raw[entry["name"]]), _inverse(entry["perm"]))
            for source_name, entry in self._output_map.items()
        }

    def close(self) -> None:
        self._runner = None
        self._interpreter = None  # type: ignore[assignment]
