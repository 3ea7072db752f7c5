"""``--bake-preprocess``: artifacts take raw uint8 NHWC images and do the preprocessing themselves.

Done when a baked artifact gives the same top-1 on raw uint8 digits images as the unbaked one on the
preprocessed floats, on each host-runnable runtime (ONNX Runtime, OpenVINO, TFLite).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401 - torch before tensorflow

from edgepack import api
from edgepack.data.dataset import Dataset
from edgepack.errors import InputError
from edgepack.exporters.openvino.predictor import OpenVinoPredictor
from edgepack.exporters.ort.predictor import OrtPredictor
from edgepack.exporters.tflite.model_io import TflitePredictor
from edgepack.models.bake import bake_preprocess, is_baked, raw_pixels
from edgepack.models.demo_digits import INPUT_NAME, PREPROCESS, load_demo_source
from edgepack.models.loaders import load_source
from edgepack.models.reference import reference_predictor
from edgepack.models.source import TensorSpec

TARGETS = ["host-ort", "x86-openvino", "android-pixel8"]
SAMPLES = 64


def _raw_digits(count: int = SAMPLES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw uint8 NHWC 0..16 pixels, the same images preprocessed as float NCHW, labels) of the eval split."""
    from sklearn.datasets import load_digits

    from edgepack.models.demo_digits import digits_split_indices

    digits = load_digits()
    index = digits_split_indices()["eval"][:count]
    raw = digits.images[index].astype(np.uint8)[..., None]  # (N, 8, 8, 1), sklearn's 0..16 values
    floats = (raw.astype(np.float32) * np.float32(PREPROCESS.scale)).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(raw), np.ascontiguousarray(floats), digits.target[index]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("bake")
    plain = api.export("demo:digits", TARGETS, out=out / "plain", recipe_chain=["fp32"], cache=False)
    baked = api.export("demo:digits", TARGETS, out=out / "baked", recipe_chain=["fp32"], cache=False,
                       bake_preprocess=True)
    return plain, baked


def _predictor(result: api.ExportResult, target: str):
    artifact = next(r.artifact for r in result.results if r.profile.id == target)
    path = result.bundle / "artifacts" / target / artifact.path.name
    if target == "host-ort":
        return OrtPredictor(path)
    if target == "x86-openvino":
        return OpenVinoPredictor(path)
    return TflitePredictor(path, artifact.settings)


def test_baked_source_spec_and_data():
    source = load_demo_source()
    baked = bake_preprocess(source)
    spec = baked.inputs[0]
    assert (spec.shape, spec.dtype, spec.layout) == (("batch", 8, 8, 1), "uint8", "NHWC") and is_baked(spec)
    assert spec.preprocess.scale == 1.0 and spec.preprocess.mean == (0.0,) and spec.preprocess.std == (1.0,)
    assert baked.sha256 != source.sha256 and baked.describe() != source.describe()
    raw, floats, _ = _raw_digits()
    converted = raw_pixels(Dataset({INPUT_NAME: floats}), source.inputs).inputs[INPUT_NAME]
    np.testing.assert_array_equal(converted, raw)  # the inverse preprocessing is exact on real pixels
    assert baked.extra["eval"].inputs[INPUT_NAME].dtype == np.uint8
    expected = reference_predictor(source)({INPUT_NAME: floats})["logits"]
    got = reference_predictor(baked)({INPUT_NAME: raw})["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bake_changes_the_export_cache_key(registry, recipes):
    from edgepack.export_cache import target_key

    source = load_demo_source()
    profile = registry.get("host-ort")
    keys = {target_key(s, profile, recipes, (), {}, {}) for s in (source, bake_preprocess(source))}
    assert len(keys) == 2


def test_baked_artifacts_match_unbaked_top1(bundles):
    plain, baked = bundles
    assert plain.ok, {r.profile.id: r.error for r in plain.results}
    assert baked.ok, {r.profile.id: r.error for r in baked.results}
    source_input = baked.manifest["source"]["inputs"][0]
    assert (source_input["dtype"], source_input["layout"], source_input["shape"]) == ("uint8", "NHWC", ["batch", 8, 8, 1])
    raw, floats, labels = _raw_digits()
    for target in TARGETS:
        entry = baked.manifest["targets"][target]
        assert entry["parity"]["passed"] and entry["gate"]["value"] >= 0.95, (target, entry["gate"])
        unbaked_logits = np.concatenate([_predictor(plain, target)({INPUT_NAME: f[None]})["logits"] for f in floats])
        baked_logits = np.concatenate([_predictor(baked, target)({INPUT_NAME: r[None]})["logits"] for r in raw])
        np.testing.assert_array_equal(baked_logits.argmax(1), unbaked_logits.argmax(1), err_msg=target)
        np.testing.assert_allclose(baked_logits, unbaked_logits, rtol=1e-4, atol=1e-4, err_msg=target)
        assert (baked_logits.argmax(1) == labels).mean() >= 0.95


def test_baked_artifacts_take_uint8(bundles):
    import onnxruntime as ort
    import openvino as ov

    _, baked = bundles
    session = ort.InferenceSession(str(baked.bundle / "artifacts/host-ort/model.onnx"), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.type == "tensor(uint8)" and model_input.shape[1:] == [8, 8, 1]
    ov_model = ov.Core().read_model(str(baked.bundle / "artifacts/x86-openvino/model.xml"))
    assert ov_model.inputs[0].get_element_type() == ov.Type.u8
    tflite_inputs = baked.manifest["targets"]["android-pixel8"]["artifact"]["inputs"]
    assert tflite_inputs[0]["dtype"] == "uint8"
    import onnx

    # the contract written into the artifact follows the baked source spec
    props = {p.key: p.value for p in onnx.load(str(baked.bundle / "artifacts/host-ort/model.onnx")).metadata_props}
    (contract_input,) = json.loads(props["edgepack.inputs"])
    assert (contract_input["dtype"], contract_input["layout"]) == ("uint8", "NHWC")
    assert contract_input["preprocess"]["scale"] == 1.0 and contract_input["preprocess"]["description"].startswith("baked")


def test_tflite_baked_input_keeps_nhwc(bundles):
    """onnx2tf moves 4-D inputs to channel-last unless told they already are (keep_nwc_or_nhwc_or_ndhwc_input_names)."""
    _, baked = bundles
    assert baked.manifest["targets"]["android-pixel8"]["artifact"]["inputs"][0]["shape"] == [1, 8, 8, 1]


def test_input_without_preprocess_is_refused_in_one_line(tmp_path):
    source = load_demo_source()
    bare = replace(source, inputs=[replace(source.inputs[0], preprocess=None)])
    with pytest.raises(InputError) as info:
        bake_preprocess(bare)
    message = str(info.value)
    assert "\n" not in message and "'image'" in message and "scale/mean/std" in message


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    result = api.export("demo:digits", ["host-ort"], out=out, recipe_chain=["fp32"], cache=False)
    assert result.ok
    path = out / "digits.onnx"
    path.write_bytes((result.bundle / "artifacts/host-ort/model.onnx").read_bytes())
    return path


def test_onnx_source_without_preprocess_is_refused(digits_onnx, tmp_path):
    with pytest.raises(InputError, match="--bake-preprocess: input 'image'"):
        api.export(str(digits_onnx), ["host-ort"], inputs=["image:batchx1x8x8"], out=tmp_path, cache=False,
                   bake_preprocess=True)


def test_onnx_source_with_preprocess_is_baked(digits_onnx):
    source = load_source(str(digits_onnx), inputs=[TensorSpec("image", ("batch", 1, 8, 8))])
    source = replace(source, inputs=[replace(source.inputs[0], preprocess=PREPROCESS, layout="NCHW")])
    baked = bake_preprocess(source)
    assert baked.onnx_path != source.onnx_path and baked.sha256 != source.sha256
    raw, floats, _ = _raw_digits()
    expected = OrtPredictor(source.onnx_path)({INPUT_NAME: floats})["logits"]
    got = OrtPredictor(baked.onnx_path)({INPUT_NAME: raw})["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_baked_int8_on_host_ort(tmp_path):
    result = api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["int8"], cache=False,
                        bake_preprocess=True, max_slowdown=1.0)  # a tiny model: int8 may not be faster
    assert result.ok, {r.profile.id: r.error for r in result.results}
    entry = result.manifest["targets"]["host-ort"]
    assert entry["artifact"]["precision"] == "int8" and entry["artifact"]["inputs"][0]["dtype"] == "uint8"
    raw, floats, labels = _raw_digits()
    logits = OrtPredictor(result.bundle / "artifacts/host-ort/model.onnx")({INPUT_NAME: raw})["logits"]
    reference = reference_predictor(load_demo_source())({INPUT_NAME: floats})["logits"]
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.97
