"""PT2E quantization with the XNNPACK quantizer, calibrated on edgepack's calibration data.

Static int8: ``XNNPACKQuantizer`` with ``get_symmetric_quantization_config`` (weights int8 symmetric, per
output channel or per tensor; activations int8 asymmetric per tensor), ``prepare_pt2e``, one forward pass per
calibration sample, ``convert_pt2e``, then ``torch.export`` again. Dynamic int8: the same quantizer with
``is_dynamic=True`` (int8 weights, activation ranges computed at run time). The calibration method picks the
activation observer: ``minmax`` -> ``MinMaxObserver``, ``mse`` -> ``HistogramObserver`` (the L2-error range
search, the quantizer's default).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgepack.compress.quantize import QuantizationPlan
from edgepack.exporters.executorch.program import example_args, quiet
from edgepack.errors import ExportError
from edgepack.models.source import ModelSource

OBSERVERS = {"minmax": "MinMaxObserver", "mse": "HistogramObserver"}
"""Recipe calibration method -> torchao PT2E activation observer."""


def unsupported_reason(plan: QuantizationPlan) -> str | None:
    """Why the XNNPACK PT2E quantizer cannot apply ``plan``, or ``None``."""
    recipe = plan.recipe
    q = recipe.quantization
    if recipe.precision not in ("int8", "int8-dynamic"):
        return f"precision '{recipe.precision}' is not implemented for executorch"
    if plan.static and recipe.calibration.method not in OBSERVERS:
        return (f"calibration method '{recipe.calibration.method}' is not mapped to a PT2E observer "
                f"(use {', '.join(OBSERVERS)})")
    if q.activations != "int8":
        return "the XNNPACK quantizer offers int8 activations only (no int16)"
    if q.io != "float":
        return "integer model I/O is not implemented for executorch (the program keeps float I/O)"
    if q.symmetric_activations:
        return "the XNNPACK quantizer quantizes activations asymmetrically; symmetric activations are not offered"
    if recipe.exclude:
        return "per-layer exclusions are not implemented for executorch (they name ONNX nodes, not torch modules)"
    return None


def _config(plan: QuantizationPlan) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    config = get_symmetric_quantization_config(is_per_channel=plan.recipe.quantization.per_channel,
                                               is_dynamic=not plan.static)
    if plan.static and plan.recipe.calibration.method == "minmax":
        from torchao.quantization.pt2e import MinMaxObserver

        spec = config.input_activation
        spec = dataclasses.replace(spec, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    return config


def quantize(program: Any, source: ModelSource, plan: QuantizationPlan) -> tuple[Any, dict[str, Any]]:
    """The quantized, re-exported program and the settings used."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(_config(plan))
    samples = 0
    try:
        with quiet():
            prepared = prepare_pt2e(program.module(), quantizer)
            if plan.static:
                for batch in plan.calibration_batches():
                    prepared(*(torch.from_numpy(batch[spec.name]) for spec in source.inputs))
                    samples += 1
            else:  # the weight observers see the weights on one pass; activation ranges stay dynamic
                prepared(*example_args(source))
            converted = convert_pt2e(prepared)
            quantized = torch.export.export(converted, example_args(source))
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else ""
        raise ExportError(f"XNNPACK PT2E quantization failed: {type(exc).__name__}: {text}") from None
    settings: dict[str, Any] = {
        "quantizer": "XNNPACKQuantizer (torchao PT2E)",
        "mode": "static" if plan.static else "dynamic",
        "weights": f"int8 symmetric, {'per channel' if plan.recipe.quantization.per_channel else 'per tensor'}",
        "activations": ("int8 asymmetric per tensor, calibrated" if plan.static
                        else "int8 asymmetric per tensor, computed at run time"),
    }
    if plan.static:
        settings |= {"calibration": plan.recipe.calibration.method,
                     "observer": OBSERVERS[plan.recipe.calibration.method], "calibration_samples": samples}
    return quantized, settings
