"""torch / ONNX -> ncnn ``.param`` + ``.bin`` with pnnx (the converter ncnn recommends).

A torch module is traced (``torch.jit.trace`` at batch 1) and the TorchScript file is handed to the ``pnnx``
binary that the ``pnnx`` wheel ships; an ONNX-only source, or a module the trace or pnnx rejects, goes through
edgepack's static ONNX hub file instead (pnnx reads ONNX too). Each failed path is reported. pnnx's own Python
``pnnx.export`` is not used: it ignores the binary's exit status and imports the Python module pnnx generates.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import ExportError
from edgepack.models.source import ModelSource, TensorSpec

PNNX_DTYPES = {"float32": "f32", "float16": "f16", "int64": "i64", "int32": "i32", "int8": "i8", "uint8": "u8"}
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Converted:
    """pnnx's ncnn model: ``.param`` and ``.bin`` paths and the path that produced them."""

    param: Path
    bin: Path
    converter: str


def _inputshape(specs: list[TensorSpec]) -> str:
    parts = []
    for spec in specs:
        if spec.dtype not in PNNX_DTYPES:
            raise ExportError(f"input '{spec.name}' has dtype {spec.dtype}, which pnnx does not take")
        parts.append("[" + ",".join(str(d) for d in spec.concrete_shape(1)) + "]" + PNNX_DTYPES[spec.dtype])
    return ",".join(parts)


def run_pnnx(model: Path, specs: list[TensorSpec], out: Path, *, fp16: bool) -> tuple[Path, Path]:
    """Run the pnnx binary on ``model`` (TorchScript or ONNX); write every output under ``out``."""
    import pnnx

    stem = out / "model"
    command = [
        pnnx.EXEC_PATH, str(model), f"inputshape={_inputshape(specs)}", f"fp16={int(fp16)}", "device=cpu",
        f"pnnxparam={stem}.pnnx.param", f"pnnxbin={stem}.pnnx.bin", f"pnnxpy={out / 'model_pnnx.py'}",
        f"pnnxonnx={stem}.pnnx.onnx", f"ncnnparam={stem}.ncnn.param", f"ncnnbin={stem}.ncnn.bin",
        f"ncnnpy={out / 'model_ncnn.py'}",
    ]
    try:
        done = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ExportError(f"pnnx did not finish within {TIMEOUT_S} s") from None
    param, weights = Path(f"{stem}.ncnn.param"), Path(f"{stem}.ncnn.bin")
    if done.returncode != 0 or not param.exists() or not weights.exists():
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip() and not line.startswith("#")]
        detail = lines[-1].strip()[:300] if lines else f"exit status {done.returncode}"
        raise ExportError(f"pnnx failed on {model.name}: {detail}")
    return param, weights


def trace(source: ModelSource, path: Path) -> None:
    """``torch.jit.trace`` the source module at batch 1 and save it as TorchScript."""
    import torch

    from edgepack.models.sample import example_inputs

    arrays = example_inputs(source.inputs, batch=1, seed=0)
    args = tuple(torch.from_numpy(arrays[s.name]) for s in source.inputs)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(source.torch_module.eval(), args, check_trace=False)
    traced.save(str(path))


def convert(source: ModelSource, scratch: Path, *, fp16: bool, hub: Callable[[], Path]) -> Converted:
    """The source as an ncnn model under ``scratch``: TorchScript through pnnx, else the ONNX hub file
    (``hub()`` returns it) through pnnx."""
    errors: list[str] = []
    if source.torch_module is not None:
        out = scratch / "torchscript"
        out.mkdir(parents=True, exist_ok=True)
        try:
            trace(source, out / "model.pt")
            return Converted(*run_pnnx(out / "model.pt", source.inputs, out, fp16=fp16), "torch.jit.trace + pnnx")
        except Exception as exc:  # noqa: BLE001 - converter failures are reported, not raised raw
            errors.append(f"torch.jit.trace + pnnx: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}")
    out = scratch / "onnx"
    out.mkdir(parents=True, exist_ok=True)
    try:
        return Converted(*run_pnnx(hub(), source.inputs, out, fp16=fp16), "onnx + pnnx")
    except Exception as exc:  # noqa: BLE001
        errors.append(f"onnx + pnnx: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}")
    raise ExportError(f"ncnn conversion of {source.uri} failed on every path: " + " | ".join(errors))
