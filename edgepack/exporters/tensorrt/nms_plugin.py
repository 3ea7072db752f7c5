"""The TensorRT build graph of a detector exported with ``--postprocess nms``: edgepack's appended NMS subgraph
(scope ``/edgepack_nms``, standard ONNX ops that ONNX Runtime checks) replaced by NVIDIA's ``EfficientNMS_TRT``
plugin, the NMS TensorRT runs fastest (``plugin/efficientNMSPlugin`` in TensorRT's repository).

The plugin takes ``boxes [1, N, 4]`` (``box_coding = 1``: ``cx, cy, w, h``) and ``scores [1, N, C]``. edgepack's
NMS keeps one class per box (its best score) and is class-aware; the same semantics in the plugin: scores are
masked to each box's best class (``OneHot(ArgMax)``), ``class_agnostic = 0`` suppresses within a class, and the
score threshold is the next float32 above ``conf`` (the plugin keeps scores ``>=`` its threshold, edgepack
``> conf``). Outputs keep the contract's names; the plugin's own shapes and dtypes differ in two places, which the
artifact's settings record: ``count`` is ``[1, 1]`` int32, and rows past ``count`` hold the plugin's padding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ExportError
from edgepack.postprocess.apply import NMS_SCOPE
from edgepack.postprocess.settings import Layout, NmsSettings

PLUGIN_FILE = "model.efficientnms.onnx"
PLUGIN_OP = "EfficientNMS_TRT"
PLUGIN_SCOPE = "/edgepack_trt_nms"
OUTPUTS = {"count": ("num_detections", "int32", [1, 1]), "boxes": ("detection_boxes", "float32", None),
           "scores": ("detection_scores", "float32", None), "classes": ("detection_classes", "int32", None)}
"""Contract output -> (plugin output, dtype, shape when it differs from the contract's)."""


def plugin_attributes(settings: NmsSettings) -> dict[str, Any]:
    return {"background_class": -1, "box_coding": 1, "class_agnostic": 0, "iou_threshold": float(settings.iou),
            "max_output_boxes": int(settings.max_det), "plugin_version": "1", "score_activation": 0,
            "score_threshold": float(np.nextafter(np.float32(settings.conf), np.float32(1)))}


def write_plugin_graph(src: Path, dst: Path, settings: NmsSettings, layout: Layout, classes: int) -> dict[str, Any]:
    """Write ``src`` with its NMS scope replaced by the plugin to ``dst``; returns what the settings record."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inside = [node for node in graph.node if node.name.startswith(NMS_SCOPE + "/")]
    if not inside:
        raise ExportError(f"{src.name} has no {NMS_SCOPE} subgraph to replace with {PLUGIN_OP}")
    produced = {name for node in inside for name in node.output}
    constants = {init.name for init in graph.initializer}
    entering = list(dict.fromkeys(name for node in inside for name in node.input
                                  if name and name not in produced and name not in constants))
    if len(entering) != 1:
        raise ExportError(f"{NMS_SCOPE} reads {len(entering)} tensors ({', '.join(entering)}); expected the head alone")
    head = entering[0]
    kept = [node for node in graph.node if not node.name.startswith(NMS_SCOPE + "/")]
    used = {name for node in kept for name in node.input}
    dropped = {init.name for init in graph.initializer if init.name not in used}

    def name(what: str) -> str:
        return f"{PLUGIN_SCOPE}/{what}"

    def const(array: np.ndarray, what: str) -> str:
        graph.initializer.append(numpy_helper.from_array(array, name(what)))
        return name(what)

    nodes = []
    rows = head
    if layout == "channels_first":
        nodes.append(helper.make_node("Transpose", [head], [name("rows")], name=name("to_rows"), perm=[0, 2, 1]))
        rows = name("rows")
    axis = const(np.asarray([2], np.int64), "axis2")
    nodes.append(helper.make_node("Slice", [rows, const(np.asarray([0], np.int64), "b0"),
                                            const(np.asarray([4], np.int64), "b4"), axis],
                                  [name("boxes_cxcywh")], name=name("boxes")))
    nodes.append(helper.make_node("Slice", [rows, const(np.asarray([4], np.int64), "c0"),
                                            const(np.asarray([4 + classes], np.int64), "c1"), axis],
                                  [name("class_scores")], name=name("class_scores")))
    nodes.append(helper.make_node("ArgMax", [name("class_scores")], [name("best")], name=name("best_class"),
                                  axis=2, keepdims=0))
    nodes.append(helper.make_node("OneHot", [name("best"), const(np.asarray([classes], np.int64), "depth"),
                                             const(np.asarray([0.0, 1.0], np.float32), "on_off")],
                                  [name("best_mask")], name=name("best_mask"), axis=-1))
    nodes.append(helper.make_node("Mul", [name("class_scores"), name("best_mask")], [name("best_scores")],
                                  name=name("best_scores")))
    outputs = [OUTPUTS[key][0] for key in ("count", "boxes", "scores", "classes")]
    nodes.append(helper.make_node(PLUGIN_OP, [name("boxes_cxcywh"), name("best_scores")],
                                  [name(o) for o in outputs], name=name("efficient_nms"), **plugin_attributes(settings)))
    for contract, (plugin, _, _) in OUTPUTS.items():
        nodes.append(helper.make_node("Identity", [name(plugin)], [contract], name=name(f"out_{contract}")))
    del graph.node[:]
    graph.node.extend(kept + nodes)
    remaining = [init for init in graph.initializer if init.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    max_det = settings.max_det
    shapes = {"count": [1, 1], "boxes": [1, max_det, 4], "scores": [1, max_det], "classes": [1, max_det]}
    dtypes = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32}
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(key, dtypes[OUTPUTS[key][1]], shapes[key])
                        for key in ("boxes", "scores", "classes", "count"))
    del graph.value_info[:]
    onnx.save(model, str(dst))
    return {"plugin": PLUGIN_OP, "onnx": dst.name, "attributes": plugin_attributes(settings),
            "outputs": {key: {"plugin_output": plugin, "dtype": dtype, "shape": shapes[key]}
                        for key, (plugin, dtype, _) in OUTPUTS.items()},
            "note": "count is [1, 1] int32 in the engine ([1] in model.onnx); rows past count hold the plugin's padding"}
