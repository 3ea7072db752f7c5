"""The .tflite side of the TFLite exporter: reading a model's I/O, mapping the source's tensors onto it,
and the host :class:`TflitePredictor` (LiteRT interpreter) that speaks the source's names, layout and
float values.

Mapping (``settings["input_map"]`` / ``settings["output_map"]``): source tensor name ->
``{"name", "position", "perm"}`` with ``artifact = source.transpose(perm)``; an output entry may also
carry ``"shape"`` when the converter squeezed, added or moved size-1 dims:
``artifact = source.transpose(perm).reshape(artifact shape)`` and back with ``reshape(shape)`` before the
inverse permutation. onnx2tf moves 4-D/5-D inputs (and possibly 3-5-D outputs) to channel-last;
litert-torch keeps the source layout. Outputs are matched by name, then by concrete shape (from one
probe run of the source: real ONNX files keep symbolic output dims), values and output order
(:func:`match_outputs`).

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
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ExportError
from edgepack.exporters.base import Arrays, Predictor
from edgepack.models.source import Dim, QuantParams, TensorSpec

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
    see :mod:`edgepack.exporters.tflite.quant` for what was measured.
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

    onnx2tf keeps the ONNX input names (up to characters TensorFlow rejects), so inputs are matched by
    name (position as a fallback); litert-torch names them ``args_N`` in the source's order, so they are
    matched by position.
    """
    lookup = {t.name: t for t in tensors} if converter == "onnx2tf" else {}
    normal = {_normal_name(t.name): t for t in tensors} if converter == "onnx2tf" else {}
    mapping: dict[str, Any] = {}
    for index, spec in enumerate(specs):
        tensor = lookup.get(spec.name) or normal.get(_normal_name(spec.name))
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


@dataclass(frozen=True)
class OutputFit:
    """How a source output fits one .tflite output: ``artifact = source.transpose(perm)``, then reshaped
    to the artifact's shape when ``reshape`` (a squeezed, unsqueezed or moved size-1 dim)."""

    tensor: TfliteTensor
    perm: tuple[int, ...]
    reshape: bool = False

    def entry(self, source_shape: Sequence[int] | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.tensor.name, "position": self.tensor.position, "perm": list(self.perm)}
        if self.reshape and source_shape is not None:
            # the artifact's output is reshaped to this (the source's shape in artifact axis order) before
            # the inverse permutation
            entry["shape"] = [int(source_shape[p]) for p in self.perm]
        return entry


_ORDERED_NAME = re.compile(r"^(?:Identity|output|StatefulPartitionedCall)(?:_(\d+))?(?::(\d+))?$")
"""Output names the TF / TFLite converters give in the model's output order: ``Identity``, ``Identity_1``
(onnx2tf float files, no signature) and ``output_0``, ``output_1`` (signature keys of its quantized files,
which the signature lists in lexicographic order: ``output_10`` before ``output_2``)."""


def declared_index(tensor: TfliteTensor) -> int:
    """The output's place in the converted model's output order (from its generated name, else its position)."""
    match = _ORDERED_NAME.match(tensor.name)
    if match is None:
        return tensor.position
    return int(match.group(1) or match.group(2) or 0)


def _normal_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _dims_fit(shape: Sequence[Dim], target: Sequence[int]) -> bool:
    """Equal rank and every fixed dim equal (symbolic dims fit anything)."""
    return len(shape) == len(target) and all(not isinstance(d, int) or d == t for d, t in zip(shape, target))


def _non_unit(shape: Sequence[Dim]) -> list[Dim]:
    return [d for d in shape if d != 1]


def _numel(shape: Sequence[Dim]) -> int | None:
    return int(np.prod(shape)) if all(isinstance(d, int) for d in shape) else None


def fit_output(shape: Sequence[Dim], tensor: TfliteTensor, converter: str) -> list[OutputFit]:
    """Every way ``shape`` (the source output's concrete shape, or its declared one with symbolic dims)
    fits ``tensor``, best first: the layouts the converter may have used (channel-last for onnx2tf's
    3-5-D outputs, then identity), exactly; then the same with size-1 dims squeezed, added or moved
    (a reshape), when everything else is equal."""
    perms = _candidate_perms(len(shape), converter)
    exact = [OutputFit(tensor, p) for p in perms if _dims_fit(_transposed_shape(shape, p), tensor.shape)]
    if exact:
        return exact
    if any(not isinstance(d, int) for d in shape):
        return []  # a reshape needs every dim known (the concrete shape from a probe run)
    return [
        OutputFit(tensor, p, reshape=True)
        for p in perms
        if _non_unit(_transposed_shape(shape, p)) == _non_unit(tensor.shape)
    ]


def _relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        return float("inf")
    if not reference.size:
        return 0.0
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    error = float(np.max(np.abs(reference - actual))) / scale
    return error if np.isfinite(error) else float("inf")


def _fit_error(fit: OutputFit, reference: np.ndarray, actual: Arrays) -> float:
    value = actual.get(fit.tensor.name)
    if value is None:
        return float("inf")
    expected = np.transpose(np.asarray(reference), fit.perm)
    if fit.reshape:
        if expected.size != np.asarray(value).size:
            return float("inf")
        expected = expected.reshape(np.asarray(value).shape)
    return _relative_error(expected, value)


def _describe(specs: Sequence[TensorSpec], shapes: dict[str, tuple[int, ...]], tensors: Sequence[TfliteTensor]) -> str:
    source = ", ".join(f"{s.name} {list(shapes.get(s.name, s.shape))}" for s in specs)
    artifact = ", ".join(f"{t.name} {list(t.shape)}" for t in tensors)
    return f"source outputs: {source}; .tflite outputs: {artifact}"


def match_outputs(
    specs: Sequence[TensorSpec],
    tensors: Sequence[TfliteTensor],
    converter: str,
    probe: tuple[Arrays, Arrays | None] | None,
) -> dict[str, Any]:
    """source output name -> {"name", "position", "perm"} (plus "shape" where a reshape is needed).

    ``probe`` = (source outputs, .tflite outputs keyed by .tflite name, or ``None`` when the .tflite could
    not be run) for one input: the source's outputs give the concrete output shapes (real ONNX files keep
    symbolic output dims after their inputs are fixed: ``p2o.DynamicDimension.3``, ``batch x 84 x ...``);
    without them the declared shapes are used, symbolic dims fitting anything.

    Each source output is matched by name (where the converter kept it); then, among the .tflite outputs
    its shape fits (see :func:`fit_output`; channel-last and squeezed forms included), the one whose
    values are closest to the source's on the probe input, ties going to the same place in the output
    order (:func:`declared_index`), then the first in that order; outputs with fewer fitting candidates
    choose first. When nothing fits by shape, an output with the same number of elements at the same
    place in the order is taken (reshaped) so that parity, not bookkeeping, judges it.
    """
    reference, actual = probe if probe is not None else ({}, None)
    shapes = {s.name: tuple(int(d) for d in np.shape(reference[s.name])) for s in specs if s.name in reference}
    ordered = sorted(tensors, key=lambda t: (declared_index(t), t.position))
    rank = {t.name: index for index, t in enumerate(ordered)}
    fits = {s.name: [f for t in ordered for f in fit_output(shapes.get(s.name, s.shape), t, converter)] for s in specs}
    mapping: dict[str, Any] = {}
    used: set[str] = set()

    def take(spec: TensorSpec, fit: OutputFit) -> None:
        used.add(fit.tensor.name)
        mapping[spec.name] = fit.entry(shapes.get(spec.name, spec.concrete_shape(1)))

    # generated names (Identity_N, output_N) say where an output is in the order, not which one it is
    by_name = {_normal_name(t.name): t.name for t in tensors if _ORDERED_NAME.match(t.name) is None}
    for spec in specs:  # 1. names the converter kept
        name = by_name.get(_normal_name(spec.name))
        fit = next((f for f in fits[spec.name] if f.tensor.name == name and name not in used), None)
        if fit is not None:
            take(spec, fit)
    def key(index: int, spec: TensorSpec) -> Any:
        def score(fit: OutputFit) -> tuple[float, bool, bool, int]:
            known = actual is not None and spec.name in reference
            error = _fit_error(fit, reference[spec.name], actual) if known else 0.0
            return (error, fit.reshape, rank[fit.tensor.name] != index, rank[fit.tensor.name])

        return score

    # 2. shape, then values, then order; the output with the fewest fitting candidates goes first, so an
    # output with a symbolic dim cannot take the only .tflite output another one fits
    pending = [(index, spec) for index, spec in enumerate(specs) if spec.name not in mapping]
    while pending:
        options = [(index, spec, [f for f in fits[spec.name] if f.tensor.name not in used]) for index, spec in pending]
        fitting = [option for option in options if option[2]]
        if not fitting:
            break
        index, spec, candidates = min(fitting, key=lambda option: (len(option[2]), option[0]))
        take(spec, min(candidates, key=key(index, spec)))
        pending.remove((index, spec))
    for index, spec in pending:  # 3. nothing fits by shape: the same size at the same place in the order
        candidates = _same_size(shapes.get(spec.name), index, ordered, used, converter)
        if not candidates:
            raise ExportError(
                f"source output '{spec.name}' {list(shapes.get(spec.name, spec.shape))} fits no unmatched .tflite "
                f"output by shape or size ({_describe(specs, shapes, tensors)})"
            )
        take(spec, min(candidates, key=key(index, spec)))
    return mapping


def _same_size(
    shape: tuple[int, ...] | None, index: int, ordered: Sequence[TfliteTensor], used: set[str], converter: str
) -> list[OutputFit]:
    """The unmatched .tflite output at the source output's place in the order, reshaped, when it has the
    same number of elements (only with a concrete shape)."""
    if shape is None or index >= len(ordered) or ordered[index].name in used:
        return []
    tensor = ordered[index]
    if _numel(shape) != _numel(tensor.shape):
        return []
    return [OutputFit(tensor, p, reshape=True) for p in _candidate_perms(len(shape), converter)]


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


def source_layout(value: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
    """A .tflite output in the source's layout: reshaped per ``entry["shape"]`` (when the converter
    squeezed or moved size-1 dims), then transposed back per ``entry["perm"]``."""
    value = np.asarray(value)
    if entry.get("shape") is not None:
        value = value.reshape(entry["shape"])
    return np.transpose(value, _inverse(entry["perm"]))


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

    def artifact_feeds(self, arrays: Arrays) -> dict[str, np.ndarray]:
        """Source-named, source-layout inputs as the artifact takes them (transposed, quantized when integer)."""
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
        feeds = self.artifact_feeds(arrays)
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
        return {name: source_layout(raw[entry["name"]], entry) for name, entry in self._output_map.items()}

    def close(self) -> None:
        self._runner = None
        self._interpreter = None  # type: ignore[assignment]
