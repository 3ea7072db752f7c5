"""ONNX is the hub format: every torch source is exported to ONNX once per (dynamic/static) variant.

Torch modules go through the TorchScript-based exporter first (fast, mature op coverage, opset 17),
then the ``torch.export``-based (dynamo) exporter as the alternate path; both failures are reported.
ONNX sources are validated, loaded with their external data and re-saved as one self-contained file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ExportError, SourceError
from edgepack.models.source import ModelSource, TensorSpec

OPSET = 17
HUB_FORMAT = "onnx"
"""Artifact format of the hub file (graph readers that declare it can read the hub)."""
_LOG = logging.getLogger(__name__)


def _dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    return {s.name: {i: str(d) for i, d in enumerate(s.shape) if not isinstance(d, int)} for s in specs}


def _example_args(source: ModelSource) -> tuple:
    import torch

    from edgepack.models.sample import example_inputs

    arrays = example_inputs(source.inputs, batch=1, seed=0)
    return tuple(torch.from_numpy(arrays[s.name]) for s in source.inputs)


def _export_torchscript(source: ModelSource, path: Path, dynamic: bool) -> None:
    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            source.torch_module,
            _example_args(source),
            str(path),
            input_names=[s.name for s in source.inputs],
            output_names=[s.name for s in source.outputs],
            dynamic_axes=(_dynamic_axes(source.inputs + source.outputs) if dynamic else None),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _export_dynamo(source: ModelSource, path: Path, dynamic: bool) -> None:
    import torch

    model = source.exported_program if source.exported_program is not None else source.torch_module
    dynamic_shapes = None
    if dynamic and source.exported_program is None:
        dims: dict[str, torch.export.Dim] = {}
        dynamic_shapes = tuple(
            {i: dims.setdefault(str(d), torch.export.Dim(str(d))) for i, d in enumerate(s.shape) if not isinstance(d, int)}
            or None
            for s in source.inputs
        )
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            _example_args(source),
            input_names=[s.name for s in source.inputs],
            output_names=[s.name for s in source.outputs],
            dynamic_shapes=dynamic_shapes,
            opset_version=18,
            dynamo=True,
        )
        program.save(str(path), external_data=False)


def _fix_static_shapes(path: Path, specs: list[TensorSpec]) -> None:
    """Pin symbolic input dims to their batch-1 value (for runtimes that need static shapes)."""
    import onnx

    model = onnx.load(str(path))
    by_name = {s.name: s for s in specs}
    for graph_input in model.graph.input:
        spec = by_name.get(graph_input.name)
        if spec is None:
            continue
        for dim, value in zip(graph_input.type.tensor_type.shape.dim, spec.concrete_shape(1)):
            dim.ClearField("dim_param")
            dim.dim_value = value
    from onnx import shape_inference

    for output in model.graph.output:
        for dim in output.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.ClearField("dim_param")
    model = shape_inference.infer_shapes(model)
    onnx.save(model, str(path))


def is_prequantized(source: ModelSource) -> bool:
    """True for modules that carry their own quantization (QAT fake-quant) and export as QDQ ONNX."""
    return callable(getattr(source.torch_module, "edgepack_onnx_export", None))


def export_onnx(source: ModelSource, workdir: Path, *, dynamic: bool) -> Path:
    """Write ``source`` as one self-contained ONNX file under ``workdir`` and return its path.

    ``dynamic`` keeps symbolic dims (e.g. batch) as ONNX dim params; otherwise they are pinned to 1.
    The file is cached on the source for the rest of the run: callers must copy it before changing it.
    """
    cache: dict[bool, Path] = source.extra.setdefault("_onnx_cache", {})
    cached = cache.get(dynamic)
    if cached is not None and cached.exists():
        return cached
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ("model.onnx" if dynamic else "model.static.onnx")
    if source.onnx_path is not None:
        _copy_onnx(source.onnx_path, path)
    elif is_prequantized(source):
        from edgepack.models.sample import example_inputs

        source.torch_module.edgepack_onnx_export(
            source.torch_module, example_inputs(source.inputs, batch=1, seed=0), [s.name for s in source.inputs],
            [s.name for s in source.outputs], path, dynamic_batch=dynamic,
        )
    else:
        errors: list[str] = []
        for name, fn in (("torch.onnx (TorchScript)", _export_torchscript), ("torch.onnx (dynamo)", _export_dynamo)):
            if name.endswith("(TorchScript)") and source.torch_module is None:
                continue
            try:
                fn(source, path, dynamic)
                break
            except Exception as exc:  # noqa: BLE001 - converter failures are reported, not raised raw
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                errors.append(f"{name}: {type(exc).__name__}: {first_line}")
                path.unlink(missing_ok=True)
        else:
            raise ExportError(f"ONNX export of {source.uri} failed on every path: " + " | ".join(errors))
    if not dynamic:
        _fix_static_shapes(path, source.inputs)
    cache[dynamic] = path
    return path


def _copy_onnx(src: Path, dst: Path) -> None:
    import onnx

    try:
        model = onnx.load(str(src), load_external_data=True)
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"{src}: cannot load ONNX: {str(exc).splitlines()[0][:200]}") from None
    if model.ByteSize() < (2 << 30) - (1 << 20):
        onnx.save(model, str(dst))
    else:  # pragma: no cover - >2 GB models keep external data
        onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    if not dst.exists():  # pragma: no cover
        shutil.copyfile(src, dst)


def onnx_values(onnx_path: Path, tensors: Sequence[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The named tensors of ``onnx_path`` for ``feeds``, from ONNX Runtime (each made a graph output);
    names the graph does not compute are left out."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    present = {o.name for o in model.graph.output}
    computed = {output for node in model.graph.node for output in node.output} | present
    wanted = [name for name in dict.fromkeys(tensors) if name in computed]
    for name in wanted:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name in set(wanted)]
    return dict(zip(names, session.run(names, dict(feeds))))
