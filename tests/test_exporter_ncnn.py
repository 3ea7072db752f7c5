"""NCNN exporter: real pnnx conversions run with the real ncnn runtime.

fp32/fp16 outputs are compared with the torch source at the recipes' own tolerances; int8 (ncnn's calibration
table and int8 layers, written by edgepack) on the demo digits model's real labels. The bundle's Python
package is generated and its runner executed against the host predictor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch  # noqa: I001 - torch before anything that could pull TensorFlow
import numpy as np
import pytest

from generated import import_generated
from edgepack import api
from edgepack.bundle.writer import read_manifest
from edgepack.compress.recipe import Recipe, load_recipes
from edgepack.contract.metadata import Contract
from edgepack.data.dataset import Dataset
from edgepack.device_bench.runners.base import artifact_from_entry
from edgepack.device_bench.runners.host import _load
from edgepack.errors import UnsupportedError
from edgepack.exporters.base import Artifact, NotRunnable
from edgepack.exporters.ncnn.calibration import BINS, _kl_threshold_bin
from edgepack.exporters.ncnn.contract import read_ncnn_contract
from edgepack.exporters.ncnn.exporter import NcnnExporter, bench_predictor
from edgepack.exporters.ncnn.param import read_param
from edgepack.exporters.ncnn.weights import INT8_TAG, layer_ranges
from edgepack.exporters.registry import get_exporter
from edgepack.models.source import ModelSource
from edgepack.package.build import package_bundle
from edgepack.parity import compare
from edgepack.targets.registry import load_registry

TARGET = "raspberry-pi5-ncnn"


@pytest.fixture(scope="module")
def profile():
    return load_registry().get(TARGET)


@pytest.fixture(scope="module")
def recipes() -> dict[str, Recipe]:
    book = load_recipes()
    return {name: book.get(name) for name in ("fp32", "fp16", "int8", "int8-full", "int4-weight")}


@pytest.fixture(scope="module")
def digits() -> ModelSource:
    from edgepack.models.demo_digits import load_demo_source

    return load_demo_source()


@pytest.fixture(scope="module")
def exported(digits, profile, recipes, tmp_path_factory) -> dict[str, Artifact]:
    exporter = NcnnExporter()
    return {name: exporter.export(digits, profile, recipes[name], digits.extra["calib"], tmp_path_factory.mktemp(name))
            for name in ("fp32", "fp16", "int8")}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    result = api.export("demo:digits", [TARGET], out=tmp_path_factory.mktemp("bundle"))
    assert result.ok, {r.profile.id: r.error for r in result.results}
    return result.bundle


def _torch(source: ModelSource, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return source.torch_module.eval()(torch.from_numpy(images)).numpy()


def _int8_weights(artifact: Artifact) -> dict[str, np.ndarray]:
    """The int8 weight arrays of the quantized layers, read back from the .bin."""
    data = artifact.path.with_suffix(".bin").read_bytes()
    out = {}
    for layer, (start, _end) in zip(read_param(artifact.path), layer_ranges(artifact.path, data)):
        if layer.int_param(8, 0):
            assert int(np.frombuffer(data, np.uint32, 1, start)[0]) == INT8_TAG
            count = layer.int_param(2 if layer.type == "InnerProduct" else 6, 0)
            out[layer.name] = np.frombuffer(data, np.int8, count, start + 4)
    return out


def test_registered_with_its_profile(profile):
    exporter = get_exporter(profile.runtime)
    assert isinstance(exporter, NcnnExporter) and profile.format in exporter.artifact_formats
    assert profile.accelerators["cpu"].op_vocabulary == exporter.capabilities.op_vocabulary == "ncnn"
    assert profile.recipes == ["int8", "fp16", "fp32"]


@pytest.mark.parametrize("name", ["fp32", "fp16"])
def test_float_artifacts_match_torch(exported, digits, recipes, name):
    artifact = exported[name]
    assert artifact.path.name == "model.param" and artifact.converter == "torch.jit.trace + pnnx"
    assert {f.name for f in artifact.files} == {"model.param", "model.bin", "model.contract.json"}
    predictor = NcnnExporter().predictor(artifact, digits)
    evaluation: Dataset = digits.extra["eval"]
    report = compare(lambda batch: {"logits": _torch(digits, batch["image"])}, predictor,
                     evaluation.batches(limit=4), recipes[name].parity)
    assert report.passed, report
    predictor.close()


def test_fp16_stores_half_precision_weights(exported):
    fp32, fp16 = (exported[n].path.with_suffix(".bin").stat().st_size for n in ("fp32", "fp16"))
    assert fp16 < 0.6 * fp32


def test_predictor_loops_over_the_batch(exported, digits):
    """ncnn blobs have no batch dim: a batch of 7 equals 7 single-sample runs, in the source's layout."""
    predictor = NcnnExporter().predictor(exported["fp32"], digits)
    images = digits.extra["eval"].inputs["image"][:7]
    batch = predictor({"image": images})["logits"]
    singles = np.concatenate([predictor({"image": images[i : i + 1]})["logits"] for i in range(7)])
    assert batch.shape == (7, 10)
    np.testing.assert_array_equal(batch, singles)
    np.testing.assert_allclose(batch, _torch(digits, images), rtol=1e-4, atol=1e-4)


def test_int8_keeps_accuracy_on_real_labels(exported, digits):
    artifact = exported["int8"]
    evaluation: Dataset = digits.extra["eval"]
    logits = NcnnExporter().predictor(artifact, digits)({"image": evaluation.inputs["image"]})["logits"]
    reference = _torch(digits, evaluation.inputs["image"])
    top1, baseline = (float(np.mean(x.argmax(1) == evaluation.labels)) for x in (logits, reference))
    assert top1 >= baseline - 0.01, (top1, baseline)
    cosine = np.sum(logits * reference, 1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.mean() >= 0.98


def test_int8_layers_and_table_follow_ncnn2int8(exported):
    artifact = exported["int8"]
    assert {f.name for f in artifact.files} == {"model.param", "model.bin", "model.table", "model.contract.json"}
    layers = {layer.name: layer for layer in read_param(artifact.path)}
    quantized = artifact.settings["quantized_layers"]
    assert [layers[name].type for name in quantized] == ["Convolution"] * 3 + ["InnerProduct"]
    assert all(layers[name].int_param(8, 0) == 2 for name in quantized)
    weights = _int8_weights(artifact)
    assert sorted(weights) == sorted(quantized)
    for name, values in weights.items():
        # 3x3 stride-1 convolutions: 6-bit weights for ncnn's int8 Winograd kernels; the Linear uses all of int8
        limit = 127 if layers[name].type == "InnerProduct" else 31
        assert np.abs(values.astype(int)).max() == limit, name
    table = dict(line.split(" ", 1) for line in artifact.path.with_name("model.table").read_text().splitlines())
    assert set(table) == {f"{n}_param_0" for n in quantized} | set(quantized)
    assert len(table["linear_4_param_0"].split()) == 10 and len(table["convrelu_2"].split()) == 1


def test_kl_threshold_clips_a_long_tail():
    """ncnn2table's KL search keeps the dense part of a distribution and clips a sparse tail."""
    rng = np.random.default_rng(0)
    values = np.abs(rng.standard_normal(200_000))
    values[:20] = 40.0  # rare outliers set absmax
    histogram = np.bincount(np.minimum((values / 40.0 * BINS).astype(int), BINS - 1), minlength=BINS)
    chosen = _kl_threshold_bin(histogram.astype(np.float64))
    assert 128 <= chosen < BINS // 4  # well below the outliers, above the dense part's end (~5 sigma = 256 bins)


def test_entropy_calibration_scales_are_at_least_minmax(digits, profile, recipes, exported, tmp_path):
    recipe = recipes["int8"].model_copy(update={"calibration": recipes["int8"].calibration.model_copy(
        update={"method": "entropy", "samples": 32})})
    artifact = NcnnExporter().export(digits, profile, recipe, digits.extra["calib"], tmp_path)
    assert artifact.settings["calibration"] == "entropy"

    def activation(path: Path) -> dict[str, float]:
        rows = [line.split() for line in path.with_name("model.table").read_text().splitlines()]
        return {row[0]: float(row[1]) for row in rows if not row[0].endswith("_param_0")}

    entropy, minmax = activation(artifact.path), activation(exported["int8"].path)
    assert entropy.keys() == minmax.keys()
    assert all(entropy[name] >= minmax[name] * 0.999 for name in entropy)  # clipping can only raise the scale


def test_contract_travels_beside_the_model(exported, digits):
    contract = read_ncnn_contract(exported["int8"].path)
    assert isinstance(contract, Contract)
    assert contract.precision == "int8" and contract.format == "ncnn" and contract.labels == tuple(digits.labels)
    assert [(t.name, t.source_name) for t in contract.inputs] == [("in0", "image")]
    assert [(t.name, t.source_name) for t in contract.outputs] == [("out0", "logits")]


def test_graph_ops_read_the_param(exported):
    exporter = NcnnExporter()
    ops = exporter.graph_ops(exported["int8"].path, "ncnn")
    assert [op.op_type for op in ops] == ["Convolution", "Convolution", "Pooling", "Convolution", "Pooling",
                                          "Reshape", "InnerProduct"]
    assert ops[0].dtypes == ("int8",) and ops[2].dtypes == ("fp32",) and ops[0].kernel == 3
    assert all(op.dtypes == ("fp32",) for op in exporter.graph_ops(exported["fp32"].path, "ncnn"))


def test_refusals_are_one_line(digits, profile, recipes, tmp_path):
    exporter = NcnnExporter()
    assert "integer I/O" in exporter.refusal(recipes["int8-full"])
    assert "int4-weight" in exporter.refusal(recipes["int4-weight"])
    calibration = recipes["int8"].calibration.model_copy(update={"method": "mse"})
    mse = recipes["int8"].model_copy(update={"calibration": calibration})
    assert "'mse' is not offered for ncnn" in exporter.refusal(mse)
    excluded = recipes["int8"].model_copy(update={"exclude": ["/features/features.0/Conv"]})
    with pytest.raises(UnsupportedError, match="not layers of the ncnn model") as info:
        exporter.export(digits, profile, excluded, digits.extra["calib"], tmp_path)
    assert "\n" not in str(info.value)


def test_exclusion_keeps_a_layer_float(digits, profile, recipes, tmp_path):
    recipe = recipes["int8"].model_copy(update={"exclude": ["linear_4"]})
    artifact = NcnnExporter().export(digits, profile, recipe, digits.extra["calib"], tmp_path)
    assert "linear_4" not in artifact.settings["quantized_layers"]
    assert {layer.name: layer.int_param(8, 0) for layer in read_param(artifact.path)}["linear_4"] == 0


def test_onnx_source_converts_through_the_hub(digits, profile, recipes, tmp_path):
    from edgepack.exporters.onnx.hub import export_onnx
    from edgepack.models.loaders import load_source

    onnx_file = export_onnx(digits, tmp_path / "hub", dynamic=True)
    source = load_source(str(onnx_file))
    artifact = NcnnExporter().export(source, profile, recipes["fp32"], None, tmp_path / "out")
    assert artifact.converter == "onnx + pnnx"
    images = digits.extra["eval"].inputs["image"][:5]
    got = NcnnExporter().predictor(artifact, source)({source.inputs[0].name: images})[source.outputs[0].name]
    np.testing.assert_allclose(got, _torch(digits, images), rtol=1e-4, atol=1e-4)


def test_bench_adapter_sets_threads(exported):
    predictor, threads = bench_predictor(exported["fp32"], 1)
    assert threads == 1 and predictor.net.opt.num_threads == 1
    predictor({"image": np.zeros((1, 1, 8, 8), np.float32)})
    assert predictor.runtime_latency_ms() is not None
    predictor.close()


def test_api_export_ships_int8_with_measured_parity(bundle):
    manifest = read_manifest(bundle)
    entry = manifest["targets"][TARGET]
    assert entry["status"] == "ok" and entry["recipe"] == "int8" and entry["runnable_here"] == "yes"
    assert entry["parity"]["passed"] and entry["parity"]["mean_cosine"] >= 0.98 and entry["gate"]["passed"]
    assert entry["artifact"]["format"] == "ncnn" and entry["artifact"]["precision"] == "int8"
    assert set(entry["toolchain"]) >= {"ncnn", "pnnx"}
    artifact = artifact_from_entry(bundle, TARGET, entry["profile"]["runtime"], entry["artifact"])
    contract = json.loads((bundle / "artifacts" / TARGET / "model.contract.json").read_text())
    assert contract["precision"] == "int8" and contract["target"] == TARGET
    as_source = {**entry["artifact"], "inputs": manifest["source"]["inputs"]}
    source_inputs = artifact_from_entry(bundle, TARGET, "x", as_source).inputs
    host = _load(artifact, source_inputs, None).predictor  # the host bench's load path
    out = host({"image": np.zeros((2, 1, 8, 8), np.float32)})
    assert out["logits"].shape == (2, 10)


def test_python_package_runs_the_artifact(bundle, tmp_path):
    package_bundle(bundle, "python", tmp_path / "pkg")
    runner_file = next((tmp_path / "pkg").glob("*_runner.py"))
    module = import_generated(runner_file)
    runner = next(v for k, v in vars(module).items() if k.endswith("Runner") and isinstance(v, type))(TARGET)
    assert runner.contract["precision"] == "int8" and runner.labels == [str(i) for i in range(10)]
    from sklearn.datasets import load_digits

    raw = load_digits().images[-12:].reshape(12, 1, 8, 8).astype(np.float32)
    outputs = runner.run({"image": raw})
    manifest = read_manifest(bundle)
    entry = manifest["targets"][TARGET]
    artifact = artifact_from_entry(bundle, TARGET, "ncnn", entry["artifact"])
    predictor = get_exporter("ncnn").predictor(artifact, None)
    assert not isinstance(predictor, NotRunnable)
    expected = predictor({"image": raw / 16.0})["logits"]
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5, atol=1e-5)
    snippet = (bundle / "snippets/python/run.py").read_text()
    assert "import ncnn" in snippet and '"in0"' in snippet
