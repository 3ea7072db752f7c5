"""Static int8 through MNN's own post-training quantizer (``quantized.out``, the wheel's ``mnnquant``).

The quantizer reads calibration samples from disk. edgepack's calibration batches are written in its
``sequence`` input layout: one folder per sample holding ``<input name>.txt`` (the values, whitespace
separated, in the model's input layout) and ``input.json`` (each input's shape), so any input count, shape and
dtype calibrates without the image decoder. Activation ranges use MNN's KL-divergence search (edgepack's
``entropy`` method; the model input keeps its max-abs range); weights are symmetric int8 per output channel
(``MAX_ABS``); activations are symmetric int8 per tensor, MNN's only activation scheme.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgepack.compress.quantize import QuantizationPlan

METHODS = {"entropy": "KL"}
"""edgepack calibration method -> MNN ``feature_quantize_method`` (MNN's ``ADMM`` and ``EMA`` have no edgepack
counterpart)."""


def unsupported_reason(plan: QuantizationPlan) -> str | None:
    """Why MNN cannot apply this plan, or ``None``."""
    recipe = plan.recipe
    if recipe.precision == "int8-dynamic":
        return None if not recipe.exclude else "MNNConvert's weight quantization has no exclude list"
    method = recipe.calibration.method
    if method not in METHODS:
        return (f"calibration method '{method}' is not offered by MNN's post-training quantizer "
                f"(it calibrates with KL divergence: use calibration.method = \"entropy\")")
    q = recipe.quantization
    if not q.symmetric_activations:
        return ("MNN's quantizer calibrates symmetric int8 activations only: set "
                "quantization.symmetric_activations = true")
    if q.activations != "int8":
        return f"{q.activations} activations are not offered by MNN's quantizer"
    if q.io != "float":
        return "MNN int8 models keep float inputs and outputs; integer model I/O is not offered"
    if not q.per_channel:
        return "MNN's quantizer stores int8 weights per output channel; per-tensor weights are not offered"
    if recipe.exclude:
        return "exclude lists are not mapped to MNN op names (skip_quant_op_names) yet"
    return None


def write_calibration(plan: QuantizationPlan, folder: Path) -> tuple[int, dict[str, list[int]]]:
    """Write the plan's calibration batches under ``folder`` in the quantizer's ``sequence`` layout; return the
    number of samples written and the first sample's input shapes."""
    count, first = 0, {}
    for count, batch in enumerate(plan.calibration_batches(), start=1):
        sample = folder / f"{count:06d}"
        sample.mkdir(parents=True)
        shapes = []
        for name, value in batch.items():
            array = np.asarray(value)
            np.savetxt(sample / f"{name}.txt", array.reshape(-1).astype(np.float64), fmt="%.9g")
            shapes.append({"name": name, "shape": [int(d) for d in array.shape]})
        (sample / "input.json").write_text(json.dumps({"inputs": shapes}))
        first = first or {entry["name"]: entry["shape"] for entry in shapes}
    return count, first


def write_config(plan: QuantizationPlan, folder: Path, samples: int, shapes: dict[str, list[int]]) -> Path:
    """The quantizer's JSON configuration for the samples in ``folder``."""
    config = {
        "path": str(folder.absolute()),
        "used_sample_num": samples,
        "input_type": "sequence",
        "inputs": [{"name": name, "shape": shape} for name, shape in shapes.items()],
        "feature_quantize_method": METHODS[plan.recipe.calibration.method],
        "weight_quantize_method": "MAX_ABS",
        "feature_clamp_value": 127,
        "weight_clamp_value": 127,
        "quant_bits": 8,
        "debug": False,
    }
    path = folder.parent / "mnnquant.json"
    path.write_text(json.dumps(config, indent=1))
    return path


def settings(plan: QuantizationPlan, samples: int) -> dict[str, object]:
    """What the quantizer was asked to do, for the artifact record."""
    return {"mode": "static", "quantizer": "MNN quantized.out (mnnquant)",
            "calibration": plan.recipe.calibration.method, "feature_quantize_method": METHODS[plan.recipe.calibration.method],
            "calibration_samples": samples, "weights": "int8 symmetric per output channel (MAX_ABS)",
            "activations": "int8 symmetric per tensor"}
