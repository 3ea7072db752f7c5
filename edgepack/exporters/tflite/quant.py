"""TFLite quantization through onnx2tf's own quantizer (the TensorFlow Lite converter with a
representative dataset), driven only by edgepack's calibration data.

Recipe -> onnx2tf output file ("variant"):

==============================================  ================  ======================================
recipe                                          variant           onnx2tf file (``model_*.tflite``)
==============================================  ================  ======================================
``int8-dynamic``                                ``int8-dynamic``  ``dynamic_range_quant``
``int8``, io float, activations int8            ``int8``          ``integer_quant``
``int8``, io int8/uint8, activations int8       ``int8-full``     ``full_integer_quant``
``int8``, io float, activations int16 (a16w8)   ``int16``         ``integer_quant_with_int16_act``
``int8`` with ``exclude`` (mixed precision)      ``int8``          its saved model, calibrated, then
                                                                  selective int8
==============================================  ================  ======================================

Mixed precision: the saved model onnx2tf wrote in the ``int8`` run is calibrated once more by the TFLite
converter, stopped before quantizing (``model_calibrated.tflite``: float ops with the calibrated ranges;
a worker run of its own, so plain int8 exports do not pay for it); the excluded source layers are mapped onto
its ops numerically (:mod:`edgepack.exporters.tflite.layers`) and the converter's MLIR quantizer
quantizes it with those ops denylisted (``denylisted_nodes``, the mechanism behind LiteRT's
``QuantizationDebugger`` selective quantization): float islands between ``DEQUANTIZE``/``QUANTIZE`` ops,
same per-channel weights and calibration as ``int8`` everywhere else.

Weights are per output channel (onnx2tf ``quant_type="per-channel"``) unless the recipe says
``per_channel = false``; activations are asymmetric int8 (the converter's only int8 scheme) or
symmetric int16. Full-integer I/O dtype goes through onnx2tf's ``input_quant_dtype`` /
``output_quant_dtype``. Calibration: ``recipe.calibration.samples`` samples of the user's data, in the
artifact's layout (NHWC for image inputs), passed as ``custom_input_op_name_np_data_path`` entries
``[name, path, 0.0, 1.0]``: onnx2tf feeds ``(data - mean) / std`` to the converter and uses the raw
file for its own checks, and edgepack's data is already model-ready, so mean 0 / std 1 keeps it as it
is (onnx2tf's ImageNet ``quant_norm_mean``/``quant_norm_std`` only apply to its downloaded sample
images, which the worker never lets it fetch).

Speed: int8 is not faster than fp32 under the LiteRT interpreter on x86 without VNNI; why (XNNPACK partitions,
the int8 ops it lacks, the graph rewrites the worker makes for it) and the measured ratios are in
docs/benchmarks.md ("LiteRT int8 on x86").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.compress.recipe import Recipe
from edgepack.data.dataset import Dataset
from edgepack.errors import UnsupportedError
from edgepack.models.source import TensorSpec

FLOAT_PRECISIONS = ("fp32", "fp16")
QUANTIZED_PRECISIONS = ("int8", "int8-dynamic")
SUPPORTED_PRECISIONS = FLOAT_PRECISIONS + QUANTIZED_PRECISIONS
ONNX2TF_FILES = {
    "fp32": "float32",
    "fp16": "float16",
    "int8-dynamic": "dynamic_range_quant",
    "int8": "integer_quant",
    "int8-full": "full_integer_quant",
    "int16": "integer_quant_with_int16_act",
    "int16-full": "full_integer_quant_with_int16_act",
}
"""Variant -> suffix of the file onnx2tf writes for it (``model_<suffix>.tflite``)."""
CALIBRATED_FILE = "model_calibrated.tflite"
"""The calibrated float model mixed-precision variants are quantized from (see :mod:`edgepack.exporters.tflite.layers`)."""


@dataclass(frozen=True)
class TfliteQuantization:
    """Which onnx2tf output a recipe needs and the onnx2tf options that produce it."""

    variant: str
    """Key of :data:`ONNX2TF_FILES`."""
    quant_type: str | None = None
    """``per-channel`` or ``per-tensor`` (quantized variants only)."""
    io_dtype: str = "int8"
    """Full-integer I/O dtype (``int8`` or ``uint8``)."""
    calibration_samples: int = 0
    """0 for variants that need no calibration data."""
    float_layers: tuple[str, ...] = ()
    """Source (ONNX) node names kept in float: mixed precision, quantized from :data:`CALIBRATED_FILE`."""

    @property
    def static(self) -> bool:
        return self.calibration_samples > 0

    def worker_options(self) -> dict[str, Any] | None:
        """The worker request's ``quantize`` entry (``None`` for float variants)."""
        if self.quant_type is None:
            return None
        return {"integer": self.static, "dynamic": True, "quant_type": self.quant_type, "io_dtype": self.io_dtype}

    def settings(self, samples_used: int) -> dict[str, Any]:
        """What the artifact records about how it was quantized."""
        if self.quant_type is None:
            return {}
        out: dict[str, Any] = {
            "variant": self.variant,
            "onnx2tf_file": CALIBRATED_FILE if self.float_layers else f"model_{ONNX2TF_FILES[self.variant]}.tflite",
            "weights": "int8",
            "quant_type": self.quant_type,
        }
        if self.variant == "int8-dynamic":
            return {**out, "activations": "float (quantized on the fly)", "io": "float"}
        return {
            **out,
            "activations": "int16 (symmetric)" if self.variant.startswith("int16") else "int8 (asymmetric)",
            "io": self.io_dtype if self.variant.endswith("-full") else "float",
            "calibration": "minmax",
            "calibration_samples": samples_used,
            "calibration_normalisation": "none (mean 0, std 1: edgepack's data is model-ready)",
            **({"float_layers": list(self.float_layers),
                "selective_quantization": "TFLite converter MLIR quantizer, denylisted_nodes"} if self.float_layers else {}),
        }


def unsupported_reason(recipe: Recipe) -> str | None:
    """Why onnx2tf's quantizer cannot apply ``recipe`` (``None`` when it can)."""
    if recipe.precision not in SUPPORTED_PRECISIONS:
        supported = ", ".join(SUPPORTED_PRECISIONS)
        return (
            f"tflite exporter: precision '{recipe.precision}' (recipe '{recipe.name}') is not supported; "
            f"supported: {supported}"
        )
    if recipe.precision in FLOAT_PRECISIONS:
        return None
    if any(spec.name == "qat" for spec in recipe.passes):
        return (
            "tflite exporter: QAT recipes (QDQ ONNX) are not mapped onto LiteRT's quantized ops: onnx2tf's "
            "quantizer would calibrate new ranges instead of using the trained ones"
        )
    q = recipe.quantization
    if recipe.exclude and (recipe.precision != "int8" or q.activations != "int8" or q.io != "float"):
        return (
            "tflite exporter: mixed precision (layers kept in float) is offered for static int8 with float I/O "
            "and int8 activations only"
        )
    if recipe.precision == "int8-dynamic":
        return None
    if recipe.calibration.method != "minmax":
        return (
            f"tflite exporter: calibration method '{recipe.calibration.method}' is not offered by the LiteRT "
            "converter (it calibrates min/max ranges)"
        )
    if q.activations == "int8" and q.symmetric_activations:
        return (
            "tflite exporter: the LiteRT converter quantizes int8 activations asymmetrically; "
            "symmetric int8 activations are not offered"
        )
    if q.activations == "int16" and q.io != "float":
        return (
            "tflite exporter: int16-activation models from onnx2tf have float or int16 I/O, not int8/uint8 "
            '(use io = "float")'
        )
    return None


def quantization_for(recipe: Recipe, calib: Dataset | None) -> TfliteQuantization:
    """The onnx2tf output and options for ``recipe`` (which :func:`unsupported_reason` accepted)."""
    if recipe.precision in FLOAT_PRECISIONS:
        return TfliteQuantization(recipe.precision)
    quant_type = "per-channel" if recipe.quantization.per_channel else "per-tensor"
    if recipe.precision == "int8-dynamic":
        return TfliteQuantization("int8-dynamic", quant_type)
    q = recipe.quantization
    if q.activations == "int16":
        variant = "int16"
    else:
        variant = "int8" if q.io == "float" else "int8-full"
    samples = min(recipe.calibration.samples, len(calib)) if calib is not None else recipe.calibration.samples
    return TfliteQuantization(
        variant, quant_type, "int8" if q.io == "float" else q.io, max(samples, 1), tuple(recipe.exclude)
    )


def check_calibration(specs: Sequence[TensorSpec], calib: Dataset | None) -> None:
    """Static quantization needs float calibration arrays for every input (onnx2tf casts calibration
    data to float32, so integer inputs such as token ids cannot be calibrated through it)."""
    if calib is None or not len(calib):
        raise UnsupportedError("static int8 needs calibration data", hint="pass --calib DATA (.npz/.npy)")
    missing = [s.name for s in specs if s.name not in calib.inputs]
    if missing:
        raise UnsupportedError(f"static int8 needs calibration data for input(s) {missing}")
    integer = [f"{s.name} ({s.dtype})" for s in specs if not s.dtype.startswith("float")]
    if integer:
        raise UnsupportedError(
            f"tflite exporter: onnx2tf calibrates float inputs only; integer input(s): {', '.join(integer)}"
        )


def artifact_layout(array: np.ndarray, perm: Sequence[int]) -> np.ndarray:
    """Calibration samples moved to the artifact's layout (e.g. NCHW -> NHWC), contiguous."""
    return np.ascontiguousarray(np.transpose(array, perm))
