"""The .tflite graph reader the placement check runs on (TFLite builtin operator names, the vocabulary of LiteRT
delegate and Edge TPU op tables)."""

from __future__ import annotations

from pathlib import Path

from edgepack.targets.placement import GraphOp

_TFLITE_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8"}


def tflite_graph_ops(path: Path) -> list[GraphOp]:
    """The operators of a .tflite file's main subgraph with their activation-input dtypes, rank, static-ness and
    op version."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    codes = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        custom = code.CustomCode()
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        codes.append((custom.decode() if custom else names.get(builtin, f"BUILTIN_{builtin}"), code.Version()))
    graph = model.Subgraphs(0)
    ops = []
    for index in range(graph.OperatorsLength()):
        operator = graph.Operators(index)
        op_type, version = codes[operator.OpcodeIndex()]
        dtypes, ranks, static = set(), [], True
        for position in range(operator.InputsLength()):
            tensor_index = operator.Inputs(position)
            if tensor_index < 0:
                continue
            tensor = graph.Tensors(tensor_index)
            if tensor.Buffer() > 0 and model.Buffers(tensor.Buffer()).DataLength() > 0:
                continue  # constant operands (int32 biases, axes) do not decide the op's compute dtype
            dtypes.add(_TFLITE_TYPES.get(tensor.Type(), "other"))
            ranks.append(tensor.ShapeLength())
            signature = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else None
            static = static and not (signature is not None and (signature < 0).any())
        ops.append(GraphOp(f"{op_type}_{index}", op_type, tuple(sorted(dtypes)), max(ranks) if ranks else None,
                           static, version=version))
    return ops
