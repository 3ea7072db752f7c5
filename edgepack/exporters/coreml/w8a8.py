"""W8A8 for Core ML without Core ML: activation ranges calibrated by evaluating the MIL program with torch ops.

coremltools' ``linear_quantize_activations`` collects per-tensor activation ranges by running the model with
Core ML ``predict`` (macOS only). Here the same ranges come from evaluating the converted program itself, op by
op, in float32 with ``torch.nn.functional`` on the user's calibration data; the ranges (keyed by the MIL
variable names, so nothing has to be matched to the torch graph) then drive coremltools' own
quantize/dequantize insertion passes, and ``linear_quantize_weights`` makes the weights int8. Programs with an
op this evaluator does not know are refused (the op is named), never calibrated partially.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from edgepack.errors import UnsupportedError
from edgepack.exporters.coreml.graph import import_coremltools

Env = dict[str, Any]
FP16_MIN_NORMAL = 2.0**-14
"""Smallest normal float16: W8A8 programs compute in fp16 and store each quantize scale (range / 127) in fp16."""


def _arg(op: Any, env: Env, name: str, default: Any = None) -> Any:
    var = op.inputs.get(name)
    if var is None:
        return default
    if isinstance(var, (list, tuple)):
        return [_value(v, env) for v in var]
    return _value(var, env)


def _value(var: Any, env: Env) -> Any:
    import torch

    if var.name in env:
        return env[var.name]
    if var.val is not None:
        value = np.asarray(var.val)
        if value.dtype.kind not in "fiub":
            return var.val  # strings (pad_type, modes)
        return torch.from_numpy(value.astype(np.float32) if value.dtype.kind == "f" else value)
    raise UnsupportedError(f"W8A8 calibration: MIL value {var.name} is neither computed nor constant")


def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.atleast_1d(np.asarray(value))]


def _padding(op: Any, env: Env, spatial: int) -> tuple[int, ...] | str:
    pad_type = str(_arg(op, env, "pad_type", "valid"))
    if pad_type == "valid":
        return (0,) * spatial
    if pad_type == "same":
        return "same"
    pads = _ints(_arg(op, env, "pad"))
    if any(pads[2 * i] != pads[2 * i + 1] for i in range(spatial)):
        raise UnsupportedError(f"W8A8 calibration: asymmetric padding in {op.name} is not evaluated")
    return tuple(pads[0::2])


def _conv(op: Any, env: Env) -> Any:
    import torch.nn.functional as F

    x, weight = _arg(op, env, "x"), _arg(op, env, "weight")
    spatial = x.dim() - 2
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(x, weight, _arg(op, env, "bias"), stride=_ints(_arg(op, env, "strides", [1] * spatial)),
              padding=_padding(op, env, spatial), dilation=_ints(_arg(op, env, "dilations", [1] * spatial)),
              groups=int(_arg(op, env, "groups", 1)))


def _pool(kind: str) -> Callable[[Any, Env], Any]:
    def run(op: Any, env: Env) -> Any:
        import torch.nn.functional as F

        x = _arg(op, env, "x")
        spatial = x.dim() - 2
        kernel, strides = _ints(_arg(op, env, "kernel_sizes")), _ints(_arg(op, env, "strides"))
        padding = _padding(op, env, spatial)
        if padding == "same":
            raise UnsupportedError(f"W8A8 calibration: 'same' pooling in {op.name} is not evaluated")
        ceil = bool(_arg(op, env, "ceil_mode", False))
        if kind == "max":
            return getattr(F, f"max_pool{spatial}d")(x, kernel, strides, padding, ceil_mode=ceil)
        exclude = bool(_arg(op, env, "exclude_padding_from_average", False))
        return getattr(F, f"avg_pool{spatial}d")(x, kernel, strides, padding, ceil_mode=ceil,
                                                 count_include_pad=not exclude)

    return run


def _reduce(fn: str) -> Callable[[Any, Env], Any]:
    def run(op: Any, env: Env) -> Any:
        x = _arg(op, env, "x")
        axes = _arg(op, env, "axes")
        dims = tuple(_ints(axes)) if axes is not None else tuple(range(x.dim()))
        keep = bool(_arg(op, env, "keep_dims", False))
        return getattr(x, fn)(dim=dims, keepdim=keep) if fn != "amax" else x.amax(dim=dims, keepdim=keep)

    return run


def _torch(name: str) -> Callable[..., Any]:
    import torch

    return getattr(torch, name)


def _evaluators() -> dict[str, Callable[[Any, Env], Any]]:
    import torch
    import torch.nn.functional as F

    unary = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu, "exp": torch.exp,
             "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "sigmoid_hard": F.hardsigmoid}
    binary = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "real_div": torch.div,
              "maximum": torch.maximum, "minimum": torch.minimum}
    table: dict[str, Callable[[Any, Env], Any]] = {
        **{name: (lambda fn: lambda op, env: fn(_arg(op, env, "x")))(fn) for name, fn in unary.items()},
        **{name: (lambda fn: lambda op, env: fn(_arg(op, env, "x"), _arg(op, env, "y")))(fn)
           for name, fn in binary.items()},
        "cast": lambda op, env: _arg(op, env, "x").float(),
        "relu6": lambda op, env: F.relu6(_arg(op, env, "x")),
        "clip": lambda op, env: torch.clamp(_arg(op, env, "x"), float(_arg(op, env, "alpha")),
                                            float(_arg(op, env, "beta"))),
        "gelu": lambda op, env: F.gelu(_arg(op, env, "x"),
                                       approximate="tanh" if str(_arg(op, env, "mode", "EXACT")) == "TANH_APPROXIMATION"
                                       else "none"),
        "conv": _conv,
        "max_pool": _pool("max"),
        "avg_pool": _pool("avg"),
        "reduce_mean": _reduce("mean"),
        "reduce_sum": _reduce("sum"),
        "reduce_max": _reduce("amax"),
        "reshape": lambda op, env: _arg(op, env, "x").reshape(_ints(_arg(op, env, "shape"))),
        "transpose": lambda op, env: _arg(op, env, "x").permute(_ints(_arg(op, env, "perm"))),
        "squeeze": lambda op, env: _arg(op, env, "x").squeeze(tuple(_ints(_arg(op, env, "axes")))),
        "expand_dims": lambda op, env: _expand(_arg(op, env, "x"), _ints(_arg(op, env, "axes"))),
        "linear": lambda op, env: F.linear(_arg(op, env, "x"), _arg(op, env, "weight"), _arg(op, env, "bias")),
        "matmul": lambda op, env: torch.matmul(
            _t(_arg(op, env, "x"), bool(_arg(op, env, "transpose_x", False))),
            _t(_arg(op, env, "y"), bool(_arg(op, env, "transpose_y", False)))),
        "softmax": lambda op, env: torch.softmax(_arg(op, env, "x"), int(_arg(op, env, "axis", -1))),
        "concat": lambda op, env: torch.cat(_arg(op, env, "values"), int(_arg(op, env, "axis"))),
        "batch_norm": lambda op, env: F.batch_norm(_arg(op, env, "x"), _arg(op, env, "mean"),
                                                   _arg(op, env, "variance"), _arg(op, env, "gamma"),
                                                   _arg(op, env, "beta"), eps=float(_arg(op, env, "epsilon", 1e-5))),
    }
    return table


def _expand(x: Any, axes: list[int]) -> Any:
    for axis in sorted(a if a >= 0 else a + x.dim() + 1 for a in axes):
        x = x.unsqueeze(axis)
    return x


def _t(x: Any, transpose: bool) -> Any:
    return x.transpose(-1, -2) if transpose else x


def activation_ranges(program: Any, batches: Iterable[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """``{mil_var_name: {"rmin", "rmax"}}`` over ``batches`` for every input and computed variable of the
    program's main function (the format coremltools' activation-quantization passes take)."""
    import torch

    evaluators = _evaluators()
    function = program.functions["main"]
    computed = [op for op in function.operations if op.op_type != "const"]
    unknown = sorted({op.op_type for op in computed if op.op_type not in evaluators})
    if unknown:
        raise UnsupportedError(f"W8A8 calibration on this host cannot evaluate MIL ops: {', '.join(unknown)}")
    stats: dict[str, dict[str, float]] = {}

    def record(name: str, value: Any) -> None:
        low, high = float(value.min()), float(value.max())
        entry = stats.setdefault(name, {"rmin": low, "rmax": high})
        entry["rmin"], entry["rmax"] = min(entry["rmin"], low), max(entry["rmax"], high)

    with torch.no_grad():
        for batch in batches:
            env: Env = {}
            for name, var in function.inputs.items():
                env[var.name] = torch.from_numpy(np.asarray(batch[name], dtype=np.float32))
                record(var.name, env[var.name])
            for op in computed:
                out = evaluators[op.op_type](op, env)
                env[op.outputs[0].name] = out
                record(op.outputs[0].name, out)
    return stats


def floor_ranges(stats: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Widen ranges whose int8 scale would underflow fp16 (``amax / 127 < 2**-14``) to the smallest that does not.

    Such tensors (e.g. the near-zero activations of a randomly initialised deep net) quantize to zero either way;
    without the floor coremltools writes a zero scale, which its own ``quantize`` op rejects."""
    floor = 127 * FP16_MIN_NORMAL
    for entry in stats.values():
        if max(abs(entry["rmin"]), abs(entry["rmax"])) < floor:
            entry["rmin"], entry["rmax"] = min(entry["rmin"], -floor), max(entry["rmax"], floor)
    return stats


def quantize_w8a8(model: Any, batches: Iterable[dict[str, np.ndarray]]) -> Any:
    """int8 activations (symmetric, per tensor, calibrated ranges) and int8 weights (symmetric, per channel)."""
    import_coremltools()
    import coremltools.optimize.coreml as cto
    from coremltools import _SPECIFICATION_VERSION_IOS_17
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    stats = floor_ranges(activation_ranges(model._mil_program, batches))
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
    passes = []
    for name in ("compression::insert_prefix_quantize_dequantize_pair",
                 "compression::insert_suffix_quantize_dequantize_pair"):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", config)])
        graph_pass.set_options([PassOption("activation_stats", stats)])
        passes.append(graph_pass)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    activations = model_utils._apply_graph_pass(model, passes, spec_version=_SPECIFICATION_VERSION_IOS_17,
                                                pymil_load_func=milproto_load.load, skip_model_load=True)
    weights = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0))
    return cto.linear_quantize_weights(activations, weights)
