"""ONNX sources reach Core ML through ``onnx2torch`` (:mod:`edgepack.models.onnx_to_torch`).

The unit tests build tiny ONNX graphs with ``onnx.helper`` that carry what real third-party files carry and
``onnx2torch`` refuses as they are: weights as ``Constant`` nodes (paddle2onnx), initializers duplicated as
graph inputs (old exporters), ``auto_pad = SAME_UPPER / SAME_LOWER``. Each converted module is compared with
ONNX Runtime. The corpus tests export every ONNX model of the real-model corpus (:mod:`corpus`) to
``iphone-15-pro``; Core ML ``predict`` does not exist on Linux, so the artifact is checked statically by the
exporter and the torch module it was traced from is checked against ONNX Runtime.
"""

from __future__ import annotations

import torch  # noqa: I001 - torch before anything that could pull TensorFlow (coremltools)
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import corpus
from edgepack import api
from edgepack.errors import UnsupportedError
from edgepack.exporters.coreml.exporter import coreml_name
from edgepack.models.onnx_to_torch import MAX_REL_ERROR, normalise, onnx_to_torch, same_pads
from edgepack.models.source import TensorSpec

INPUT = TensorSpec("x", ("batch", 3, 16, 15), "float32")
"""A symbolic batch and odd/even spatial sizes, so SAME padding is asymmetric on one axis."""


def _awkward_model(path, *, opset: int = 13) -> None:
    """Conv (SAME_UPPER, stride 2, weight as a Constant node) -> MaxPool (SAME_LOWER) -> Conv whose weight is an
    initializer that is also listed as a graph input."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 2, 2)).astype(np.float32)
    b2 = rng.standard_normal(2).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1")),
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv_same_upper", auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool_same_lower", auto_pad="SAME_LOWER",
                         kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["y"], name="conv_dup_input", pads=[1, 0, 1, 0]),
    ]
    graph = helper.make_graph(
        nodes, "awkward",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 15]),
         helper.make_tensor_value_info("w2", TensorProto.FLOAT, [2, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 9, 7])],
        initializer=[numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_same_pads_follow_the_onnx_spec():
    """Total padding ``(ceil(in/s) - 1) * s + (k - 1) * d + 1 - in``; the odd element goes to the end for
    SAME_UPPER, to the beginning for SAME_LOWER."""
    assert same_pads("SAME_UPPER", [16, 15], [3, 3], [2, 2], [1, 1]) == [0, 1, 1, 1]
    assert same_pads("SAME_LOWER", [16, 15], [3, 3], [2, 2], [1, 1]) == [1, 1, 0, 1]
    assert same_pads("SAME_UPPER", [8], [2], [1], [1]) == [0, 1]
    assert same_pads("SAME_UPPER", [7], [3], [1], [2]) == [2, 2]
    assert same_pads("SAME_UPPER", [4], [1], [4], [1]) == [0, 0]


def test_normalisation_rewrites_what_onnx2torch_refuses(tmp_path):
    path = tmp_path / "awkward.onnx"
    _awkward_model(path)
    model, rewrites = normalise(onnx.load(str(path)), [INPUT])
    assert rewrites == ["1 initializers dropped from the graph inputs", "1 Constant nodes -> initializers",
                        "1 auto_pad SAME_LOWER -> explicit pads", "1 auto_pad SAME_UPPER -> explicit pads"]
    assert [i.name for i in model.graph.input] == ["x"]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 16, 15]
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in model.graph.node}
    assert "auto_pad" not in attrs["conv_same_upper"] and attrs["conv_same_upper"]["pads"] == [0, 1, 1, 1]
    assert attrs["pool_same_lower"]["pads"] == [1, 1, 0, 0]
    onnx.checker.check_model(model)


def test_converted_module_matches_onnx_runtime(tmp_path):
    """The normalised graph through onnx2torch equals ONNX Runtime on the original file (another input than
    the one the conversion verified on)."""
    path = tmp_path / "awkward.onnx"
    _awkward_model(path)
    converted = onnx_to_torch(path, [INPUT])
    assert converted.max_rel_error <= MAX_REL_ERROR
    x = np.random.default_rng(7).standard_normal((1, 3, 16, 15)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    with torch.inference_mode():
        actual = converted.module(torch.from_numpy(x)).numpy()
    assert actual.shape == expected.shape == (1, 2, 9, 7)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_an_op_onnx2torch_lacks_is_named_with_its_node(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Hardmax", ["r"], ["y"], name="the_hardmax")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "hardmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(UnsupportedError) as caught:
        onnx_to_torch(path, [TensorSpec("x", (1, 4))])
    message = str(caught.value)
    assert "node 'the_hardmax' (Hardmax, opset 13)" in message and "Converter is not implemented" in message
    assert "\n" not in message


def test_same_padding_on_conv_transpose_is_refused_precisely(tmp_path):
    w = np.ones((3, 2, 3, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", auto_pad="SAME_UPPER", strides=[2, 2])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "up.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(UnsupportedError, match=r"node 'up' \(ConvTranspose\): auto_pad=SAME_UPPER is not rewritten"):
        onnx_to_torch(path, [TensorSpec("x", (1, 3, 4, 4))])


@pytest.mark.slow
def test_tiny_onnx_source_exports_to_core_ml(tmp_path):
    """End to end through the API: the awkward graph becomes an mlpackage, converter and toolchain say how."""
    path = tmp_path / "awkward.onnx"
    _awkward_model(path)
    result = api.export(str(path), ["iphone-15-pro"], inputs=["x:1x3x16x15:float32"], recipe_chain=["fp32"],
                        cache=False, out=tmp_path / "out")
    entry = result.manifest["targets"]["iphone-15-pro"]
    assert entry["status"] == "ok", entry.get("error")
    artifact = entry["artifact"]
    assert artifact["converter"] == "coremltools (onnx2torch + torch.jit.trace)"
    assert entry["toolchain"]["onnx2torch"] == "1.5.15"
    settings = artifact["settings"]
    assert settings["static_check"] == "passed"
    assert settings["onnx_to_torch"]["max_rel_error"] <= MAX_REL_ERROR
    assert [i["shape"] for i in settings["io"]["inputs"]] == [[1, 3, 16, 15]]


# --------------------------------------------------------------------------------------------------
# The real-model corpus on Core ML
# --------------------------------------------------------------------------------------------------

EXPORTS = ("orientation", "ppocr-cls", "ppocr-rec", "ppocr-det", "layout-cdla")
"""Corpus ONNX models that reach Core ML (fp32) through onnx2torch."""
UNSUPPORTED = {
    "silero-vad-ov": "node 'F2::If_0_then_branch__Inline_0__/decoder/rnn/LSTM' (LSTM, opset 16): "
                     "NotImplementedError: Converter is not implemented",
}
"""Corpus ONNX models onnx2torch 1.5.15 cannot convert, with the report asserted: it has no LSTM converter."""


def test_every_corpus_onnx_model_is_covered():
    assert sorted((*EXPORTS, *UNSUPPORTED)) == sorted(corpus.ONNX_MODELS)


def _export_core_ml(key: str, tmp_path) -> tuple[dict, dict]:
    """The iphone-15-pro entry and the source description of an fp32 export of corpus model ``key``."""
    model = corpus.MODELS[key]
    result = api.export(str(corpus.model_path(key)), ["iphone-15-pro"], inputs=list(model.inputs),
                        recipe_chain=["fp32"], cache=False, out=tmp_path / "out")
    return result.manifest["targets"]["iphone-15-pro"], result.manifest["source"]


@pytest.mark.slow
@pytest.mark.parametrize("key", EXPORTS)
def test_corpus_onnx_model_exports_to_core_ml(key, tmp_path):
    """The mlpackage passes the exporter's static check (spec loads, I/O names and shapes are the source's,
    iOS 17 opset); the torch module it was traced from matched ONNX Runtime within MAX_REL_ERROR. ONNX names
    that are not identifiers (``transpose_0.tmp_0``) keep coremltools' sanitised form, listed in ``renamed_io``."""
    entry, source = _export_core_ml(key, tmp_path)
    assert entry["status"] == "ok", entry.get("error")
    settings = entry["artifact"]["settings"]
    assert settings["static_check"] == "passed"
    assert settings["onnx_to_torch"]["max_rel_error"] <= MAX_REL_ERROR
    assert entry["artifact"]["converter"].startswith("coremltools (onnx2torch + ")
    names = [o["name"] for o in source["outputs"]]
    assert [o["name"] for o in settings["io"]["outputs"]] == [coreml_name(n) for n in names]
    assert [o["name"] for o in entry["artifact"]["outputs"]] == [coreml_name(n) for n in names]
    assert [o["shape"] for o in entry["artifact"]["outputs"]] == [o["shape"] for o in settings["io"]["outputs"]]
    assert settings.get("renamed_io", {}) == {n: coreml_name(n) for n in names if coreml_name(n) != n}


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(UNSUPPORTED))
def test_corpus_onnx_model_core_ml_failure_is_precise(key, tmp_path):
    """Silero VAD's LSTM: onnx2torch has no LSTM converter, so the cell fails naming the node, op and the
    converter's message, in one line."""
    entry, _ = _export_core_ml(key, tmp_path)
    assert entry["status"] == "failed"
    assert UNSUPPORTED[key] in entry["error"] and "Traceback" not in entry["error"]
    assert "\n" not in entry["error"]
