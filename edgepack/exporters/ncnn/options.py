"""The ncnn runtime options an artifact runs with (the host predictor, the bench and the generated runner)."""

from __future__ import annotations

FP16_OPTIONS = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage")


def runtime_options(precision: str) -> dict[str, bool]:
    """ncnn's defaults, except that fp32 artifacts turn off fp16/bf16 storage and arithmetic: on Armv8.2 CPUs
    (Cortex-A76) and Vulkan GPUs ncnn otherwise computes a float model in fp16."""
    return {name: False for name in FP16_OPTIONS} if precision == "fp32" else {}
