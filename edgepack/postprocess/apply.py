"""``--postprocess nms``: append NMS to a detection head at the source level.

:func:`apply_postprocess` turns a source whose one output is a YOLO-style head (``[1, 4+C, N]`` or
``[1, N, 4+C]``, see :mod:`edgepack.postprocess.settings`) into one whose outputs are fixed-size detections:

========  ==================  =======  ===============================================================
name      shape               dtype    meaning
========  ==================  =======  ===============================================================
boxes     ``[1, max_det, 4]``  float32  ``x1, y1, x2, y2`` in the head's coordinates, best score first
scores    ``[1, max_det]``     float32  the box's class score
classes   ``[1, max_det]``     int32    the class index (``-1`` in padding rows)
count     ``[1]``              int32    how many rows are detections; the rest are zeros
========  ==================  =======  ===============================================================

Like ``--bake-preprocess`` it works on the source, so every exporter gets the same graph without a branch
per runtime: torch sources are wrapped in a module whose NMS step exports as the ONNX subgraph of
:mod:`edgepack.postprocess.graph` (and runs :func:`~edgepack.postprocess.reference.reference_nms` in
eager mode: the fp32 reference), ONNX sources get the subgraph appended to a copy of their graph.
The batch is pinned to 1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgepack.errors import InputError
from edgepack.models.onnx_rewrite import save_rewritten
from edgepack.models.source import ModelSource, TensorSpec
from edgepack.postprocess.graph import MIN_OPSET, OnnxBuilder, build_nms
from edgepack.postprocess.settings import OUTPUT_NAMES, Layout, NmsSettings, head_layout

POSTPROCESS_KEY = "postprocess"
"""``ModelSource.extra`` key holding :meth:`NmsSettings.to_dict` (read by the contract, the gate, the manifest)."""
RAW_OUTPUTS_KEY = "raw_outputs"
"""``ModelSource.extra`` key holding the head output specs the detections replaced."""
NMS_SCOPE = "/edgepack_nms"
"""Scope of every ONNX node of the appended NMS (both paths), so quantizers can be told to keep it float."""


def output_specs(settings: NmsSettings) -> list[TensorSpec]:
    """The four fixed-size outputs (see the module docstring)."""
    d = settings.max_det
    return [TensorSpec("boxes", (1, d, 4), "float32"), TensorSpec("scores", (1, d), "float32"),
            TensorSpec("classes", (1, d), "int32"), TensorSpec("count", (1,), "int32")]


def postprocess_settings(source: ModelSource) -> NmsSettings | None:
    """The NMS settings a source was post-processed with, if any."""
    data = source.extra.get(POSTPROCESS_KEY)
    return NmsSettings.from_dict(data) if data else None


def apply_postprocess(source: ModelSource, settings: NmsSettings, workdir: Path | None = None) -> ModelSource:
    """A new source whose outputs are NMS detections; :class:`InputError` for any other head layout."""
    if POSTPROCESS_KEY in source.extra:
        raise InputError(f"--postprocess nms: {source.uri} is already post-processed")
    if len(source.outputs) != 1:
        names = ", ".join(f"'{s.name}' {list(s.shape)}" for s in source.outputs)
        raise InputError(f"--postprocess nms: {source.uri} has {len(source.outputs)} outputs ({names}); the detection "
                         "head contract is exactly one output [1, 4+C, N] or [1, N, 4+C]")
    head = source.outputs[0]
    inputs = [spec.with_static_shape(1) for spec in source.inputs]
    shape = tuple(head.shape)
    if source.onnx_path is not None and not all(isinstance(d, int) for d in shape[1:]):
        shape = _concrete_shape(Path(source.onnx_path), inputs, head.name) or shape
    layout, classes, boxes = head_layout(shape, head.name, source.uri)
    recipe = {**settings.to_dict(), "layout": layout}
    sha = hashlib.sha256(f"{source.sha256}|postprocess|{json.dumps(recipe, sort_keys=True)}".encode()).hexdigest()
    extra = {k: v for k, v in source.extra.items() if not k.startswith("_")}  # drop per-run caches (_onnx_cache)
    extra[POSTPROCESS_KEY] = {**settings.to_dict(), "head": {"name": head.name, "layout": layout,
                                                               "classes": classes, "boxes": boxes}}
    extra[RAW_OUTPUTS_KEY] = list(source.outputs)
    common: dict[str, Any] = {"sha256": sha, "inputs": inputs, "outputs": output_specs(settings), "extra": extra,
                              "exported_program": None}
    if source.torch_module is not None:
        module = NmsHead(source.torch_module, layout, classes, boxes, settings)
        return replace(source, torch_module=module, onnx_path=None, **common)
    if source.onnx_path is not None:
        path = _append_onnx(Path(source.onnx_path), head.name, inputs, layout, classes, boxes, settings, workdir)
        return replace(source, onnx_path=path, **common)
    raise InputError(f"--postprocess nms: {source.uri} has neither a torch module nor an ONNX file")


def _concrete_shape(path: Path, inputs: list[TensorSpec], output: str) -> tuple[int, ...] | None:
    """The shape of ``output`` at batch 1 for an ONNX file whose output dims are symbolic (detection exports
    often write ``batch x 84 x f(height, width)``): one ONNX Runtime run on zeros; ``None`` if it cannot run."""
    import numpy as np

    from edgepack.exporters.ort.predictor import OrtPredictor

    try:
        predictor = OrtPredictor(path)
        try:
            feeds = {s.name: np.zeros(s.concrete_shape(1), s.dtype) for s in inputs}
            return tuple(int(d) for d in predictor(feeds)[output].shape)
        finally:
            predictor.close()
    except Exception:  # noqa: BLE001 - the layout check then reports the declared shape
        return None


def _append_onnx(
    path: Path, head: str, inputs: list[TensorSpec], layout: Layout, classes: int, boxes: int,
    settings: NmsSettings, workdir: Path | None,
) -> Path:
    """A copy of ``path`` (inputs pinned to batch 1) whose outputs are the NMS detections of ``head``."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))  # external data loaded: the copy is self-contained
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise InputError(f"--postprocess nms: {path} uses ONNX opset {opset}; the NMS ops need opset {MIN_OPSET} or "
                         "later", hint="convert it with onnx.version_converter first")
    graph = model.graph
    by_name = {s.name: s for s in inputs}
    for graph_input in graph.input:
        spec = by_name.get(graph_input.name)
        if spec is not None:
            for dim, value in zip(graph_input.type.tensor_type.shape.dim, spec.shape):
                dim.ClearField("dim_param")
                dim.dim_value = int(value)
    builder = OnnxBuilder(NMS_SCOPE)
    values = build_nms(builder, head, layout, classes, boxes, settings)
    for value, name in zip(values, OUTPUT_NAMES):
        builder.rename_output(value, name)
    graph.node.extend(builder.nodes)
    graph.initializer.extend(builder.initializers)
    types = {"boxes": TensorProto.FLOAT, "scores": TensorProto.FLOAT, "classes": TensorProto.INT32,
             "count": TensorProto.INT32}
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(spec.name, types[spec.name], list(spec.shape))
                        for spec in output_specs(settings))
    return save_rewritten(model, path, workdir, "nms")


def _torch_classes() -> tuple[type, type]:
    import numpy as np
    import torch
    from torch import nn

    from edgepack.postprocess.graph import TorchBuilder
    from edgepack.postprocess.reference import reference_nms

    class _Nms(torch.autograd.Function):
        """Eager: :func:`reference_nms`; exported: the ONNX subgraph of :func:`build_nms`."""

        @staticmethod
        def forward(ctx: Any, raw: Any, layout: str, classes: int, boxes: int, iou: float, conf: float,
                    max_det: int) -> Any:
            out = reference_nms(np.asarray(raw.detach().cpu().numpy()), layout,  # type: ignore[arg-type]
                                NmsSettings(iou=iou, conf=conf, max_det=max_det))
            return tuple(torch.from_numpy(out[name]) for name in OUTPUT_NAMES)

        @staticmethod
        def symbolic(g: Any, raw: Any, layout: str, classes: int, boxes: int, iou: float, conf: float,
                     max_det: int) -> Any:
            return build_nms(TorchBuilder(g), raw, layout, classes, boxes,  # type: ignore[arg-type]
                             NmsSettings(iou=iou, conf=conf, max_det=max_det))

    class _NmsStep(nn.Module):
        """The NMS alone: a submodule, so its exported nodes carry the :data:`NMS_SCOPE` scope."""

        def __init__(self, plan: tuple[Any, ...]) -> None:
            super().__init__()
            self.plan = plan

        def forward(self, raw: Any) -> Any:
            return _Nms.apply(raw.to(torch.float32), *self.plan)

    class _NmsHead(nn.Module):
        """The wrapped detector followed by NMS; returns ``(boxes, scores, classes, count)``."""

        def __init__(self, inner: Any, layout: Layout, classes: int, boxes: int, settings: NmsSettings) -> None:
            super().__init__()
            self.inner = inner
            plan = (layout, classes, boxes, float(settings.iou), float(settings.conf), int(settings.max_det))
            setattr(self, NMS_SCOPE.strip("/"), _NmsStep(plan))

        def forward(self, *inputs: Any) -> Any:
            raw = self.inner(*inputs)
            if isinstance(raw, (tuple, list)):
                raw = raw[0]
            return getattr(self, NMS_SCOPE.strip("/"))(raw)

    return _Nms, _NmsHead


_CLASSES: tuple[type, type] | None = None


def NmsHead(inner: Any, layout: Layout, classes: int, boxes: int, settings: NmsSettings) -> Any:  # noqa: N802
    """The torch wrapper (built lazily so importing this module does not import torch)."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _torch_classes()
    return _CLASSES[1](inner, layout, classes, boxes, settings).eval()


def float_nodes(onnx_path: Path) -> tuple[str, ...]:
    """What quantizers must keep in float in a post-processed model: the NMS scope, and the nodes producing
    the head it reads. A YOLO head concatenates box coordinates (pixels) and class scores (0..1) into one
    tensor; one int8 scale for both leaves the scores a handful of levels, and NMS then ranks noise."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inside = [node for node in graph.node if node.name.startswith(NMS_SCOPE + "/")]
    if not inside:
        return ()
    produced_inside = {out for node in inside for out in node.output}
    entering = {name for node in inside for name in node.input if name and name not in produced_inside}
    producers = [node.name for node in graph.node
                 if node.name and not node.name.startswith(NMS_SCOPE + "/") and set(node.output) & entering]
    return (NMS_SCOPE, *producers)
