"""MNN: MNNConvert from the ONNX hub (fp32, fp16, weight-only int8), MNN's own post-training quantizer (static
int8), the bizCode contract, graph ops, host parity with the real MNN runtime and the generated Python runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from generated import import_generated
from edgepack import api
from edgepack.bundle.writer import read_manifest
from edgepack.compress.quantize import QuantizationPlan
from edgepack.contract.metadata import Contract
from edgepack.device_bench.runners.base import artifact_from_entry
from edgepack.device_bench.runners.host import _load
from edgepack.errors import ExportError
from edgepack.exporters.mnn.contract import read_bizcode, read_mnn_contract, write_mnn_contract
from edgepack.exporters.mnn.tools import mnnconvert
from edgepack.exporters.registry import capabilities, get_exporter
from edgepack.package.build import package_bundle

TARGET = "android-mnn"
@pytest.fixture(scope="module")
def bundle(tmp_path_factory, one_torch_thread) -> Path:
    """demo:digits on android-mnn with the profile's own chain: full int8 (int8-entropy) first, then weight-only
    int8, fp16, fp32; the gate picks the first that passes."""
    result = api.export("demo:digits", [TARGET], out=tmp_path_factory.mktemp("bundle"))
    assert result.manifest["targets"][TARGET]["status"] == "ok", result.manifest["targets"][TARGET].get("error")
    return result.bundle


def _digits_raw(n: int = 16) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images[-n:].reshape(n, 1, 8, 8).astype(np.float32)


def _host_predictor(bundle: Path):
    manifest = read_manifest(bundle)
    entry = manifest["targets"][TARGET]
    artifact = artifact_from_entry(bundle, TARGET, entry["profile"]["runtime"], entry["artifact"])
    return _load(artifact, artifact.inputs, 2).predictor, artifact


def test_full_int8_through_mnnquant_ships_with_parity(bundle):
    entry = read_manifest(bundle)["targets"][TARGET]
    assert entry["recipe"] == "int8-entropy"
    artifact = entry["artifact"]
    assert artifact["format"] == "mnn" and artifact["path"].endswith("model.mnn")
    assert artifact["settings"]["quantizer"].startswith("MNN quantized.out")
    assert artifact["settings"]["feature_quantize_method"] == "KL"
    assert artifact["settings"]["calibration_samples"] == 128
    assert entry["parity"]["passed"] and entry["parity"]["samples"] >= 8
    assert entry["parity"]["mean_cosine"] >= 0.99 and entry["parity"]["top1_agreement"] >= 0.95
    assert entry["gate"]["passed"] and entry["gate"]["drop"] <= 0.01
    assert entry["toolchain"]["mnn"]
    # the names and layout are the source's
    assert [i["name"] for i in artifact["inputs"]] == ["image"] and artifact["inputs"][0]["layout"] == "NCHW"
    assert [o["name"] for o in artifact["outputs"]] == ["logits"]


def test_weight_only_int8_is_the_profile_fallback(tmp_path, one_torch_thread):
    entry = api.export("demo:digits", [TARGET], out=tmp_path, recipe_chain=["int8-dynamic"]).manifest["targets"][TARGET]
    assert entry["recipe"] == "int8-dynamic"
    assert entry["artifact"]["settings"]["converter_options"] == ["--weightQuantBits", "8"]
    assert entry["parity"]["passed"] and entry["parity"]["mean_cosine"] >= 0.999
    assert entry["gate"]["passed"]


@pytest.mark.parametrize("recipe, min_cosine", [("fp32", 0.9999), ("fp16", 0.999)])
def test_float_precisions_match_the_source(tmp_path, one_torch_thread, recipe, min_cosine):
    result = api.export("demo:digits", [TARGET], out=tmp_path, recipe_chain=[recipe])
    entry = result.manifest["targets"][TARGET]
    assert entry["status"] == "ok" and entry["recipe"] == recipe
    assert entry["parity"]["mean_cosine"] >= min_cosine and entry["parity"]["passed"]
    if recipe == "fp32":
        assert entry["parity"]["max_rel_error"] <= 1e-5
    else:
        assert entry["artifact"]["settings"]["converter_options"] == ["--fp16"]
        fp16_bytes = entry["artifact"]["bytes"]
        assert fp16_bytes < 60_000  # float16 weights: about half the fp32 file (99 kB)


def test_contract_travels_in_the_bizcode(bundle):
    path = bundle / read_manifest(bundle)["targets"][TARGET]["artifact"]["path"]
    contract = read_mnn_contract(path)
    assert contract is not None and contract.target == TARGET and contract.precision == "int8"
    assert contract.labels is not None and len(contract.labels) == 10
    # MNN itself reads the same string back
    from edgepack.exporters.mnn.runtime import mnn

    info = mnn().nn.load_module_from_file(str(path), ["image"], ["logits"]).get_info()
    assert json.loads(info["bizCode"]) == json.loads(read_bizcode(path))


def test_contract_rewrite_keeps_the_model_and_replaces_the_old_one(tmp_path, bundle):
    path = tmp_path / "model.mnn"
    path.write_bytes((bundle / read_manifest(bundle)["targets"][TARGET]["artifact"]["path"]).read_bytes())
    predictor, artifact = _host_predictor(bundle)
    raw = _digits_raw(4) * np.float32(0.0625)
    before = predictor({"image": raw})["logits"]
    contract = read_mnn_contract(path)
    bigger = Contract.from_dict({**contract.to_dict(), "labels": [f"class {i} " * 40 for i in range(10)]})
    write_mnn_contract(path, bigger)
    assert read_mnn_contract(path).labels == bigger.labels
    from edgepack.exporters.mnn.predictor import MnnPredictor

    after = MnnPredictor(path, ["image"], ["logits"], batch=1)({"image": raw})["logits"]
    np.testing.assert_array_equal(before, after)


def test_host_predictor_slices_batches_and_returns_source_names(bundle):
    predictor, _ = _host_predictor(bundle)
    raw = _digits_raw(12) * np.float32(0.0625)
    together = predictor({"image": raw})
    assert set(together) == {"logits"} and together["logits"].shape == (12, 10)
    one_by_one = np.concatenate([predictor({"image": raw[i : i + 1]})["logits"] for i in range(12)])
    np.testing.assert_array_equal(together["logits"], one_by_one)
    assert predictor.runtime_latency_ms() > 0


def test_graph_ops_in_mnn_vocabulary(bundle):
    path = bundle / read_manifest(bundle)["targets"][TARGET]["artifact"]["path"]
    assert capabilities("mnn").op_vocabulary == "mnn"
    ops = get_exporter("mnn").graph_ops(path, "mnn")
    types = [op.op_type for op in ops]
    assert "Convolution" in types and "Pooling" in types
    assert not {"Input", "Const"} & set(types)
    convs = [op for op in ops if op.op_type == "Convolution"]
    assert all(op.dtypes == ("int8",) for op in convs)  # full int8: activation-quantized convolutions
    first = convs[0]
    assert (first.kernel, first.stride, first.dilation, first.channels) == (3, 1, 1, 16)


def test_recipes_mnn_cannot_honour_are_refused_with_the_reason(recipes):
    exporter = get_exporter("mnn")
    assert "entropy" in exporter.refusal(recipes.get("int8"))  # min-max asymmetric: not offered by mnnquant
    assert exporter.refusal(recipes.get("int8-full")) is not None
    assert "precision" in exporter.refusal(recipes.get("int4-weight"))
    kl = recipes.get("int8-entropy")
    assert exporter.refusal(kl) is None
    asymmetric = kl.model_copy(update={"quantization": kl.quantization.model_copy(update={"symmetric_activations": False})})
    assert "symmetric" in exporter.refusal(asymmetric)
    assert exporter.quantization_reason(QuantizationPlan(kl.model_copy(update={"exclude": ["conv1"]}), None))


def test_converter_failure_is_one_line_with_its_own_message(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model at all")
    with pytest.raises(ExportError) as caught:
        mnnconvert(broken, tmp_path / "out.mnn", [])
    message = str(caught.value)
    assert message.startswith("MNNConvert (ONNX -> MNN) failed: ") and "\n" not in message
    assert not (tmp_path / "out.mnn").exists()


def test_importing_the_runtime_keeps_stdout_clean():
    code = "import edgepack.exporters.mnn.runtime as r; r.mnn(); print('ONLY')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "ONLY\n" and "device supports" not in done.stderr


def test_python_package_runs_the_mnn_artifact(bundle, tmp_path):
    result = package_bundle(bundle, "python", tmp_path / "py")
    assert result.targets == [TARGET]
    module = import_generated(tmp_path / "py" / "digits_cnn_runner.py")
    assert module.RUNTIME_MODULES == {"mnn": "MNN"}
    assert module.TARGETS[TARGET]["runtime"] == "mnn" and module.TARGETS[TARGET]["static_batch"] == 1
    runner = module.DigitsCnnRunner(TARGET)
    assert runner.contract is not None and runner.contract["target"] == TARGET  # read from the bizCode
    raw = _digits_raw(8)
    got = runner.run({"image": raw})
    want, _ = _host_predictor(bundle)
    np.testing.assert_array_equal(got["logits"], want({"image": raw * np.float32(0.0625)})["logits"])
    raw_file = tmp_path / "raw.npy"
    np.save(raw_file, raw[:2])
    done = subprocess.run([sys.executable, str(tmp_path / "py" / "digits_cnn_runner.py"), str(raw_file), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["target"] == TARGET  # stdout holds the JSON only, not MNN's start-up lines
    requirements = (tmp_path / "py" / "requirements.txt").read_text()
    assert f"mnn=={read_manifest(bundle)['targets'][TARGET]['toolchain']['mnn']}" in requirements


def test_bundle_snippet_runs(bundle):
    snippet = bundle / "snippets" / "python" / "run.py"
    done = subprocess.run([sys.executable, str(snippet)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "logits: float32 [1, 10]" in done.stdout


def test_dynamic_batch_int8_runs_one_sample_at_a_time(tmp_path, one_torch_thread, registry):
    """With a free batch dim (a profile with dynamic shapes), full-int8 artifacts still run sample by sample, in
    the host predictor and in the generated runner, so a batch gives the per-sample values."""
    from edgepack.targets.registry import Registry

    dynamic = registry.get(TARGET).model_copy(update={"dynamic_shapes": True})
    result = api.export("demo:digits", [TARGET], out=tmp_path / "out", recipe_chain=["int8-entropy"],
                        registry=Registry({TARGET: dynamic}))
    entry = result.manifest["targets"][TARGET]
    assert entry["status"] == "ok" and entry["artifact"]["inputs"][0]["shape"][0] == "batch"
    predictor, _ = _host_predictor(result.bundle)
    raw = _digits_raw(6)
    together = predictor({"image": raw * np.float32(0.0625)})["logits"]
    singles = np.concatenate([predictor({"image": raw[i : i + 1] * np.float32(0.0625)})["logits"] for i in range(6)])
    np.testing.assert_array_equal(together, singles)
    package_bundle(result.bundle, "python", tmp_path / "py")
    module = import_generated(tmp_path / "py" / "digits_cnn_runner.py")
    assert module.TARGETS[TARGET]["static_batch"] is None
    np.testing.assert_array_equal(module.DigitsCnnRunner(TARGET).run({"image": raw})["logits"], together)
