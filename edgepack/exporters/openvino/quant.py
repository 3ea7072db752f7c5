"""OpenVINO quantization through NNCF, driven by edgepack's calibration data and exclude list.

Static int8 uses ``nncf.quantize`` (symmetric activations: the PERFORMANCE preset; asymmetric: MIXED);
dynamic int8 maps to NNCF int8 weight compression (activations stay float on the CPU plugin).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

from edgepack.compress.quantize import QuantizationPlan
from edgepack.errors import ExportError

_RANGE_ESTIMATORS = ("minmax", "percentile", "mse")
"""mse -> NNCF's HISTOGRAM estimator (PyTorch HistogramObserver's L2-error search)."""


def unsupported_reason(plan: QuantizationPlan) -> str | None:
    """Why NNCF cannot apply this plan, or ``None``."""
    if plan.recipe.precision == "int4-weight":
        return None
    method = plan.recipe.calibration.method
    if plan.static and method not in _RANGE_ESTIMATORS:
        return f"calibration method '{method}' is not mapped to NNCF (use {', '.join(_RANGE_ESTIMATORS)})"
    if plan.recipe.quantization.activations == "int16":
        return "int16 activations are not offered by the OpenVINO CPU plugin"
    if plan.recipe.quantization.io != "float":
        return "integer model I/O is not implemented for openvino"
    if not plan.recipe.quantization.per_channel:
        return "NNCF always quantizes weights per channel on CPU; per-tensor is not offered"
    return None


def _advanced(plan: QuantizationPlan) -> Any:
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    if plan.recipe.calibration.method == "percentile":
        outlier = 1.0 - plan.recipe.calibration.percentile / 100.0
        estimator = RangeEstimatorParameters(
            min=StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MIN, quantile_outlier_prob=outlier),
            max=StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MAX, quantile_outlier_prob=outlier),
        )
    elif plan.recipe.calibration.method == "mse":
        estimator = RangeEstimatorParametersSet.HISTOGRAM
    else:
        estimator = RangeEstimatorParametersSet.MINMAX
    return AdvancedQuantizationParameters(activations_range_estimator_params=estimator)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF draws Rich progress bars on stdout; the CLI owns the terminal, so swallow them."""
    logging.getLogger("nncf").setLevel(logging.ERROR)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _ov_names(model: Any, exclude: tuple[str, ...]) -> list[str]:
    """OpenVINO op names for ONNX node names: the converter keeps the name and splits a biased
    Conv/Gemm into ``NAME/WithoutBiases`` (the compute op) plus an ``Add`` named ``NAME``."""
    if not exclude:
        return []
    names: list[str] = []
    ops = [op.get_friendly_name() for op in model.get_ordered_ops()]
    for wanted in exclude:
        matched = [name for name in ops if name == wanted or name.startswith(wanted.rstrip("/") + "/")]
        if not matched:
            raise ExportError(f"exclude entry '{wanted}' matches no operation of the OpenVINO model")
        names.extend(m for m in matched if m not in names)
    return names


def quantize(model: Any, plan: QuantizationPlan) -> tuple[Any, dict[str, object]]:
    """Return the quantized ``openvino.Model`` and the settings actually used."""
    with _quiet():
        return _quantize(model, plan)


def _quantize(model: Any, plan: QuantizationPlan) -> tuple[Any, dict[str, object]]:
    import nncf

    names = _ov_names(model, plan.exclude)
    ignored = nncf.IgnoredScope(names=names) if names else None
    if plan.recipe.precision == "int4-weight":
        return _int4(model, plan, ignored)
    if not plan.static:
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)
        return compressed, {"mode": "weight-compression", "weights": "int8_asym", "excluded": list(plan.exclude)}
    q = plan.recipe.quantization
    preset = nncf.QuantizationPreset.PERFORMANCE if q.symmetric_activations else nncf.QuantizationPreset.MIXED
    batches = list(plan.calibration_batches())
    quantized = nncf.quantize(
        model,
        nncf.Dataset(batches),
        preset=preset,
        subset_size=len(batches),
        ignored_scope=ignored,
        advanced_parameters=_advanced(plan),
    )
    return quantized, {
        "mode": "static",
        "preset": preset.name,
        "calibration": plan.recipe.calibration.method,
        "calibration_samples": len(batches),
        "excluded": list(plan.exclude),
    }


def _int4(model: Any, plan: QuantizationPlan, ignored: Any) -> tuple[Any, dict[str, object]]:
    """NNCF group-wise int4 weight compression; AWQ uses the calibration data for its scales."""
    import nncf

    config = plan.recipe.weight_only
    mode = nncf.CompressWeightsMode.INT4_SYM if config.symmetric else nncf.CompressWeightsMode.INT4_ASYM
    awq = config.method == "awq"
    dataset = nncf.Dataset(list(plan.calibration_batches())) if awq else None
    compressed = nncf.compress_weights(
        model, mode=mode, group_size=config.group_size, ratio=config.ratio, ignored_scope=ignored, dataset=dataset,
        awq=awq or None, subset_size=plan.recipe.calibration.samples,
    )
    return compressed, {"mode": "weight-only", "weights": mode.value, "group_size": config.group_size,
                        "method": config.method, "ratio": config.ratio, "excluded": list(plan.exclude)}
