"""The NMS subgraph appended after a detection head, written once for two builders.

:func:`build_nms` emits standard ONNX ops only, centred on ``NonMaxSuppression``: each runtime converts
that op to its own NMS (ONNX Runtime runs it; OpenVINO's frontend makes it ``NMS``; onnx2tf makes it
TFLite's ``NON_MAX_SUPPRESSION_V4``; TensorRT's ONNX parser makes it an ``INMSLayer``). The same
function writes the ops into an ONNX file (:class:`OnnxBuilder`, for ONNX sources) and into the graph
``torch.onnx.export`` builds (:class:`TorchBuilder`, the ``symbolic`` of the torch wrapper).

Steps: transpose ``[1, 4+C, N]`` to ``[1, N, 4+C]``; ``cx, cy, w, h`` to ``x1, y1, x2, y2``; best class
(``ArgMax``) and its score (``GatherElements``); offset each box by ``class * (2 * max|coord| + 1)`` so
boxes of different classes never overlap, which makes one single-class ``NonMaxSuppression`` class-aware
(as TFLite's single-class NMS and the offset trick of YOLO's own ``batched_nms``); gather the selected
rows, pad with zeros (classes with -1) to ``max_det`` and slice, and count the selected boxes. Only
opset-11 ops with their opset-11..21 forms (no ``Squeeze``/``ReduceMax`` with axes), so the ops fit
any ONNX source's opset from 11 on.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from edgepack.postprocess.reference import PAD_CLASS
from edgepack.postprocess.settings import Layout, NmsSettings

ONNX_FLOAT = 1
ONNX_INT32 = 6
ONNX_INT64 = 7
MIN_OPSET = 11


class Builder(Protocol):
    """Adds one op (``op``) or one constant (``const``) and returns the value(s) it made."""

    def op(self, op_type: str, *inputs: Any, outputs: int = 1, name: str = "", **attrs: Any) -> Any: ...

    def const(self, array: np.ndarray, name: str) -> Any: ...


def build_nms(b: Builder, raw: Any, layout: Layout, classes: int, boxes: int, settings: NmsSettings) -> tuple[Any, ...]:
    """Append the NMS ops after ``raw`` (the head output); returns ``(boxes, scores, classes, count)``."""
    n, c, d = boxes, classes, settings.max_det
    i64 = lambda values, name: b.const(np.asarray(values, np.int64), name)  # noqa: E731 - local shorthand
    rows = b.op("Transpose", raw, perm=[0, 2, 1], name="to_rows") if layout == "channels_first" else raw
    axis2 = i64([2], "axis2")
    box = b.op("Slice", rows, i64([0], "s0"), i64([4], "s4"), axis2, name="box")
    xy = b.op("Slice", box, i64([0], "b0"), i64([2], "b2"), axis2, name="xy")
    wh = b.op("Slice", box, i64([2], "b2b"), i64([4], "b4"), axis2, name="wh")
    half = b.op("Mul", wh, b.const(np.asarray(0.5, np.float32), "half_c"), name="half")
    xyxy = b.op("Concat", b.op("Sub", xy, half, name="lo"), b.op("Add", xy, half, name="hi"), axis=2, name="xyxy")
    scores = b.op("Slice", rows, i64([4], "c0"), i64([4 + c], "c1"), axis2, name="class_scores")
    best = b.op("ArgMax", scores, axis=2, keepdims=1, name="best_class")  # [1, N, 1] int64
    best_score = b.op("GatherElements", scores, best, axis=2, name="best_score")  # [1, N, 1]
    extent = b.op("ReduceMax", b.op("Abs", xyxy, name="abs"), keepdims=1, name="extent")  # [1, 1, 1]
    step = b.op("Add", b.op("Mul", extent, b.const(np.asarray(2.0, np.float32), "two"), name="twice"),
                b.const(np.asarray(1.0, np.float32), "one"), name="step")
    offset = b.op("Mul", b.op("Cast", best, to=ONNX_FLOAT, name="best_float"), step, name="offset")
    separated = b.op("Add", xyxy, offset, name="separated")  # [1, N, 4]
    nms_scores = b.op("Reshape", best_score, i64([1, 1, n], "score_shape"), name="nms_scores")  # [1, 1, N]
    selected = b.op("NonMaxSuppression", separated, nms_scores, i64([d], "max_det"),
                    b.const(np.asarray([settings.iou], np.float32), "iou"),
                    b.const(np.asarray([settings.conf], np.float32), "conf"), center_point_box=0, name="nms")
    index = b.op("Gather", selected, b.const(np.asarray(2, np.int64), "col2"), axis=1, name="index")  # [K]
    flat_boxes = b.op("Reshape", xyxy, i64([n, 4], "box_rows"), name="flat_boxes")
    flat_scores = b.op("Reshape", best_score, i64([n], "score_rows"), name="flat_scores")
    flat_classes = b.op("Reshape", b.op("Cast", best, to=ONNX_INT32, name="best_int"), i64([n], "class_rows"),
                        name="flat_classes")
    picked_boxes = b.op("Gather", flat_boxes, index, axis=0, name="picked_boxes")
    picked_scores = b.op("Gather", flat_scores, index, axis=0, name="picked_scores")
    picked_classes = b.op("Gather", flat_classes, index, axis=0, name="picked_classes")

    def fixed(value: Any, filler: np.ndarray, shape: list[int], tag: str) -> Any:
        padded = b.op("Concat", value, b.const(filler, f"{tag}_pad"), axis=0, name=f"{tag}_padded")
        first = b.op("Slice", padded, i64([0], f"{tag}_from"), i64([d], f"{tag}_to"), i64([0], f"{tag}_axis"),
                     name=f"{tag}_first")
        return b.op("Reshape", first, i64(shape, f"{tag}_shape"), name=f"{tag}_out")

    out_boxes = fixed(picked_boxes, np.zeros((d, 4), np.float32), [1, d, 4], "boxes")
    out_scores = fixed(picked_scores, np.zeros((d,), np.float32), [1, d], "scores")
    out_classes = fixed(picked_classes, np.full((d,), PAD_CLASS, np.int32), [1, d], "classes")
    count = b.op("Cast", b.op("Shape", index, name="selected_shape"), to=ONNX_INT32, name="count")  # [1]
    return out_boxes, out_scores, out_classes, count


class OnnxBuilder:
    """Collects nodes and initializers for an ONNX graph; value names are ``PREFIX/<name>``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def op(self, op_type: str, *inputs: Any, outputs: int = 1, name: str = "", **attrs: Any) -> Any:
        from onnx import helper

        node_name = f"{self.prefix}/{name or op_type}_{len(self.nodes)}"
        names = [node_name] if outputs == 1 else [f"{node_name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names[0] if outputs == 1 else tuple(names)

    def const(self, array: np.ndarray, name: str) -> Any:
        from onnx import numpy_helper

        full = f"{self.prefix}/{name}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array), full))
        return full

    def rename_output(self, value: str, new: str) -> None:
        """Make the node producing ``value`` write ``new`` instead (graph output names)."""
        for node in self.nodes:
            node.output[:] = [new if out == value else out for out in node.output]


class TorchBuilder:
    """Adapts :class:`Builder` to the graph context of a ``torch.autograd.Function.symbolic``."""

    def __init__(self, g: Any) -> None:
        self.g = g

    def op(self, op_type: str, *inputs: Any, outputs: int = 1, name: str = "", **attrs: Any) -> Any:
        typed = {}
        for key, value in attrs.items():
            if isinstance(value, float):
                typed[f"{key}_f"] = value
            else:
                typed[f"{key}_i"] = value
        return self.g.op(op_type, *inputs, outputs=outputs, **typed)

    def const(self, array: np.ndarray, name: str) -> Any:
        import torch

        return self.g.op("Constant", value_t=torch.from_numpy(np.array(array)))
