"""The deployment contract inside each artifact, read back with each runtime's own reader: labels,
preprocessing, source sha256 and recipe, with the artifact still running and the bundle still verifying."""

from __future__ import annotations

import json
import zipfile

import torch  # noqa: F401 - torch before tensorflow / coremltools
import torch._dynamo  # noqa: F401
import numpy as np
import pytest

from edgepack import api
from edgepack.contract.metadata import CLASS_LOGITS, Contract
from edgepack.exporters.tflite.contract import CONTRACT_FILE, LABELS_FILE, METADATA_NAME, tflite_metadata_buffer

TARGETS = ["host-ort", "x86-openvino", "android-pixel8", "iphone-15-pro"]
INT8_TARGETS = ["coral-edgetpu", "jetson-orin"]
"""Default recipe chains (full-integer for the Edge TPU, QDQ ONNX for TensorRT), calibrated on the demo's data."""
LABELS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def float_bundle(tmp_path_factory):
    result = api.export("demo:digits", TARGETS, out=tmp_path_factory.mktemp("contract"), recipe_chain=["fp32"],
                        cache=False)
    for target in TARGETS:
        entry = result.manifest["targets"][target]
        assert entry["status"] == "ok", (target, entry.get("error"))
    return result


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    result = api.export("demo:digits", INT8_TARGETS, out=tmp_path_factory.mktemp("contract_int8"), cache=False)
    for target in INT8_TARGETS:
        entry = result.manifest["targets"][target]
        assert entry["status"] == "ok", (target, entry.get("error"))
    return result


def _artifact(result, target):
    return result.bundle / result.manifest["targets"][target]["artifact"]["path"]


def _check_contract(contract: Contract, result, target: str, *, layout: str = "NCHW") -> None:
    entry = result.manifest["targets"][target]
    assert contract.labels == tuple(LABELS)
    assert contract.source_sha256 == result.manifest["source"]["sha256"]
    assert contract.recipe == entry["recipe"]
    assert contract.target == target
    assert contract.edgepack_version
    assert contract.toolchain and all(isinstance(v, str) for v in contract.toolchain.values())
    (image,) = contract.inputs
    assert image.source_name == "image" and image.layout == layout
    assert image.preprocess["scale"] == pytest.approx(1 / 16)
    assert image.preprocess["mean"] == [0.0] and image.preprocess["std"] == [1.0]
    assert image.preprocess["colour_order"] == "grayscale" and image.preprocess["size"] == [8, 8]
    (logits,) = contract.outputs
    assert logits.source_name == "logits" and logits.semantics == CLASS_LOGITS and logits.shape[-1] == 10


def _digits_input(shape=(1, 1, 8, 8)):
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def test_bundle_still_verifies(float_bundle):
    api.verify(float_bundle.bundle)


@pytest.mark.parametrize("target", ["host-ort", "jetson-orin"])
def test_onnx_metadata_props(float_bundle, int8_bundle, target):
    import onnxruntime as ort

    bundle = float_bundle if target in TARGETS else int8_bundle
    path = _artifact(bundle, target)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["edgepack.labels"]) == LABELS
    assert meta["edgepack.source_sha256"] == bundle.manifest["source"]["sha256"]
    assert meta["edgepack.recipe"] == bundle.manifest["targets"][target]["recipe"]
    assert json.loads(meta["edgepack.preprocess"])["image"]["scale"] == pytest.approx(1 / 16)
    _check_contract(Contract.from_json(meta["edgepack.contract"]), bundle, target)
    assert meta["edgepack.format"] == bundle.manifest["targets"][target]["artifact"]["format"]
    (out,) = session.run(None, {"image": _digits_input()})
    assert out.shape == (1, 10)


def test_openvino_rt_info(float_bundle):
    import openvino as ov

    path = _artifact(float_bundle, "x86-openvino")
    model = ov.Core().read_model(str(path))
    info = model.get_rt_info()
    assert "edgepack" in info
    assert json.loads(model.get_rt_info(["edgepack", "labels"]).astype(str)) == LABELS
    assert model.get_rt_info(["edgepack", "source_sha256"]).astype(str) == float_bundle.manifest["source"]["sha256"]
    assert model.get_rt_info(["edgepack", "recipe"]).astype(str) == "fp32"
    _check_contract(Contract.from_json(model.get_rt_info(["edgepack", "contract"]).astype(str)), float_bundle,
                    "x86-openvino")
    compiled = ov.Core().compile_model(model, "CPU")
    out = compiled({"image": _digits_input()})
    assert next(iter(out.values())).shape == (1, 10)


def _check_tflite(result, target, *, float_io: bool) -> None:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    path = _artifact(result, target)
    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert METADATA_NAME in names
    buffer = tflite_metadata_buffer(path)
    assert buffer is not None and buffer[4:8] == b"M001"  # metadata_schema.fbs file identifier
    with zipfile.ZipFile(path) as archive:
        assert archive.read(LABELS_FILE).decode().splitlines() == LABELS
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        contract = Contract.from_json(archive.read(CONTRACT_FILE))
    _check_contract(contract, result, target, layout="NHWC")
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = _digits_input(tuple(detail["shape"]))
    if not float_io:
        scale, zero = detail["quantization"]
        x = np.clip(np.round(x / scale + zero), 0, 255).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    assert interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).size == 10


def test_tflite_metadata_and_labels(float_bundle):
    _check_tflite(float_bundle, "android-pixel8", float_io=True)


def test_edgetpu_metadata_and_labels(int8_bundle):
    _check_tflite(int8_bundle, "coral-edgetpu", float_io=False)
    contract = Contract.from_json(zipfile.ZipFile(_artifact(int8_bundle, "coral-edgetpu")).read(CONTRACT_FILE))
    assert contract.format == "tflite-edgetpu" and "edgetpu_compiler" in contract.toolchain
    assert contract.inputs[0].dtype == "uint8" and contract.inputs[0].quant["scale"] > 0


def test_int8_bundle_still_verifies(int8_bundle):
    assert int8_bundle.manifest["targets"]["jetson-orin"]["artifact"]["format"] == "onnx-qdq"
    api.verify(int8_bundle.bundle)


def test_coreml_user_defined_metadata(float_bundle):
    import coremltools as ct

    path = _artifact(float_bundle, "iphone-15-pro")
    model = ct.models.MLModel(str(path), skip_model_load=True)
    meta = model.user_defined_metadata
    assert json.loads(meta["edgepack.labels"]) == LABELS
    assert meta["edgepack.source_sha256"] == float_bundle.manifest["source"]["sha256"]
    assert meta["edgepack.recipe"] == "fp32"
    _check_contract(Contract.from_json(meta["edgepack.contract"]), float_bundle, "iphone-15-pro")
    assert "preprocess" in model.input_description["image"]
    assert "class logits" in model.output_description["logits"]
    assert model.short_description


def test_contract_round_trips_and_is_sorted(float_bundle):
    meta_path = _artifact(float_bundle, "host-ort")
    import onnx

    props = {p.key: p.value for p in onnx.load(str(meta_path)).metadata_props}
    contract = Contract.from_json(props["edgepack.contract"])
    assert Contract.from_json(contract.to_json()) == contract
    assert contract.to_json() == props["edgepack.contract"]
    assert list(json.loads(props["edgepack.contract"])) == sorted(json.loads(props["edgepack.contract"]))
