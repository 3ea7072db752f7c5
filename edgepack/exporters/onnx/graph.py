"""The ONNX graph reader the placement check runs on (ONNX op types, the vocabulary of ONNX-based profiles)."""

from __future__ import annotations

from pathlib import Path

from edgepack.targets.placement import GraphOp

_ONNX_TYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool", 11: "float64"}


def onnx_graph_ops(path: Path) -> list[GraphOp]:
    """The ops of an ONNX graph with dtype / rank / kernel / stride / dilation facts (after shape inference)."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = model.graph
    types: dict[str, onnx.TypeProto] = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        types[value.name] = value.type
    initializers = {init.name: init for init in graph.initializer}
    ops = []
    for index, node in enumerate(graph.node):
        dtypes, ranks, static = [], [], True
        for name in node.input:
            if not name:
                continue
            if name in initializers:
                dtypes.append(_ONNX_TYPES.get(initializers[name].data_type, "other"))
                continue
            tensor = types.get(name)
            if tensor is None or not tensor.HasField("tensor_type"):
                continue
            dtypes.append(_ONNX_TYPES.get(tensor.tensor_type.elem_type, "other"))
            dims = tensor.tensor_type.shape.dim
            ranks.append(len(dims))
            static = static and all(d.HasField("dim_value") for d in dims)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 else None
        ops.append(GraphOp(
            name=node.name or f"{node.op_type}_{index}",
            op_type=node.op_type,
            dtypes=tuple(sorted(set(dtypes))),
            rank=max(ranks) if ranks else None,
            static=static,
            kernel=max(attrs["kernel_shape"]) if attrs.get("kernel_shape") else None,
            stride=max(attrs["strides"]) if attrs.get("strides") else None,
            dilation=max(attrs["dilations"]) if attrs.get("dilations") else None,
            channels=int(weight.dims[0]) if weight is not None and weight.dims else None,
        ))
    return ops
