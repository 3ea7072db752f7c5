"""edgepack package: Android / iOS / Python deliverables generated from real bundles.

The Python runner is checked against the artifacts' own host predictors (real ONNX Runtime, OpenVINO and
LiteRT inference); the Kotlin file against the manifest's names, shapes, preprocessing and quantization
constants, and compiled with kotlinc against stub signatures where kotlinc is installed. Swift cannot be
compiled here (no Swift toolchain, no macOS): its file is checked textually.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from generated import import_generated
from edgepack import api
from edgepack.bundle.writer import read_manifest
from edgepack.cli import app
from edgepack.device_bench.runners.base import artifact_from_entry
from edgepack.device_bench.runners.host import _load
from edgepack.errors import InputError, UnsupportedError
from edgepack.package.build import MARKER, package_bundle
from edgepack.package.context import literal, model_names

TARGETS = ["host-ort", "android-pixel8", "x86-openvino"]


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory, one_torch_thread) -> Path:
    return api.export("demo:digits", TARGETS, out=tmp_path_factory.mktemp("bundle")).bundle


@pytest.fixture(scope="module")
def full_int8_bundle(tmp_path_factory, one_torch_thread) -> Path:
    """A .tflite with uint8 model inputs/outputs (quantization parameters in the manifest)."""
    result = api.export("demo:digits", ["android-pixel8"], out=tmp_path_factory.mktemp("int8"),
                        recipe_chain=["int8-full"])
    assert result.manifest["targets"]["android-pixel8"]["status"] == "ok"
    return result.bundle


def _digits_raw(n: int = 24) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images[-n:].reshape(n, 1, 8, 8).astype(np.float32)  # raw 0..16 values


def _host_predictor(bundle: Path, target: str):
    manifest = read_manifest(bundle)
    entry = manifest["targets"][target]
    artifact = artifact_from_entry(bundle, target, entry["profile"]["runtime"], entry["artifact"])
    source_inputs = artifact_from_entry(bundle, target, "x", {**entry["artifact"], "inputs": manifest["source"]["inputs"]}).inputs
    return _load(artifact, source_inputs, None).predictor


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# python
# --------------------------------------------------------------------------------------------------


def test_python_runner_matches_host_predictors(digits_bundle, tmp_path):
    result = package_bundle(digits_bundle, "python", tmp_path / "py")
    assert result.targets == ["host-ort", "x86-openvino", "android-pixel8"]  # onnx, IR, tflite preference
    module = import_generated(tmp_path / "py" / "digits_cnn_runner.py")
    assert module.BUNDLE_SHA256 == result.bundle_sha256
    raw = _digits_raw()
    scale = read_manifest(digits_bundle)["source"]["inputs"][0]["preprocess"]["scale"]
    for target in result.targets:
        runner = module.DigitsCnnRunner(target)
        got = runner.run({"image": raw})
        want = _host_predictor(digits_bundle, target)({"image": raw * np.float32(scale)})
        assert set(got) == {"logits"}
        np.testing.assert_array_equal(got["logits"], want["logits"])
        assert runner.top1(got) == [str(i) for i in np.argmax(want["logits"], axis=1)]
        np.testing.assert_array_equal(runner.run({"image": raw * np.float32(scale)}, preprocessed=True)["logits"],
                                      want["logits"])


def test_python_runner_full_int8_io(full_int8_bundle, tmp_path):
    package_bundle(full_int8_bundle, "python", tmp_path / "py")
    module = import_generated(tmp_path / "py" / "digits_cnn_runner.py")
    config = module.TARGETS["android-pixel8"]
    assert config["input_map"]["image"]["dtype"] == "uint8" and config["input_map"]["image"]["quant"]
    raw = _digits_raw(8)
    got = module.DigitsCnnRunner("android-pixel8").run({"image": raw})
    want = _host_predictor(full_int8_bundle, "android-pixel8")({"image": raw * np.float32(0.0625)})
    np.testing.assert_array_equal(got["logits"], want["logits"])


def test_python_package_layout_and_requirements(digits_bundle, tmp_path):
    package_bundle(digits_bundle, "python", tmp_path / "py")
    manifest = read_manifest(digits_bundle)
    files = _tree(tmp_path / "py")
    assert files["models/host-ort/model.onnx"] == (digits_bundle / "artifacts/host-ort/model.onnx").read_bytes()
    requirements = files["requirements.txt"].decode()
    for target, dist in (("host-ort", "onnxruntime"), ("x86-openvino", "openvino"), ("android-pixel8", "ai-edge-litert")):
        assert f"{dist}=={manifest['targets'][target]['toolchain'][dist]}" in requirements
    marker = json.loads(files[MARKER])
    assert marker["platform"] == "python" and marker["files"]["digits_cnn_runner.py"]


def test_python_package_runs_the_jetson_qdq_onnx_as_edgepack_checked_it(tmp_path):
    """``package -p python`` takes the TensorRT-bound QDQ ONNX it validated itself (issue 18, item 14): the
    runner uses ONNX Runtime, as edgepack's parity check did, and the README says where the engine is built."""
    bundle = api.export("demo:digits", ["jetson-orin"], out=tmp_path / "b").bundle
    entry = read_manifest(bundle)["targets"]["jetson-orin"]
    assert entry["artifact"]["format"] == "onnx-qdq"
    done = CliRunner().invoke(app, ["package", str(bundle), "-p", "python", "-o", str(tmp_path / "py")])
    assert done.exit_code == 0, done.output
    module = import_generated(tmp_path / "py" / "digits_cnn_runner.py")
    assert module.TARGETS["jetson-orin"]["runtime"] == "onnxruntime"
    raw = _digits_raw()
    got = module.DigitsCnnRunner("jetson-orin").run({"image": raw})
    predictor = _host_predictor(bundle, "jetson-orin")  # a static batch of 1 (DLA-compatible build)
    want = np.concatenate([predictor({"image": raw[i : i + 1] * np.float32(0.0625)})["logits"] for i in range(len(raw))])
    np.testing.assert_array_equal(got["logits"], want)
    readme = (tmp_path / "py" / "README.md").read_text()
    assert "here ONNX\nRuntime runs the same graph" in readme and "models/jetson-orin/build_engine.sh" in readme


# --------------------------------------------------------------------------------------------------
# android
# --------------------------------------------------------------------------------------------------


def _kotlin(out: Path) -> str:
    return next(out.rglob("*Runner.kt")).read_text()


def test_android_package_carries_manifest_facts(digits_bundle, tmp_path):
    result = package_bundle(digits_bundle, "android", tmp_path / "android")
    out = tmp_path / "android"
    manifest = read_manifest(digits_bundle)
    entry = manifest["targets"]["android-pixel8"]
    artifact = entry["artifact"]
    kotlin = _kotlin(out)
    assert (out / "src/main/assets/digits-cnn/model.tflite").read_bytes() == (digits_bundle / artifact["path"]).read_bytes()
    assert (out / "src/main/assets/digits-cnn/labels.txt").read_text().split() == manifest["labels"]
    assert "class DigitsCnnRunner" in kotlin
    assert result.bundle_sha256 in kotlin and artifact["sha256"] in kotlin
    spec = artifact["inputs"][0]
    pre = spec["preprocess"]
    assert f'inputs["{spec["name"]}"]' in kotlin
    assert f"IMAGE_SHAPE = intArrayOf({', '.join(str(d) for d in spec['shape'])})" in kotlin
    assert f"IMAGE_SCALE = {literal(pre['scale'])}f" in kotlin
    assert f"IMAGE_MEAN = floatArrayOf({', '.join(literal(v) + 'f' for v in pre['mean'])})" in kotlin
    assert f"IMAGE_STD = floatArrayOf({', '.join(literal(v) + 'f' for v in pre['std'])})" in kotlin
    out_spec = artifact["outputs"][0]
    assert f'outputs["{out_spec["name"]}"]' in kotlin  # the .tflite's own output name ...
    assert "val logits: FloatArray" in kotlin  # ... exposed under the source's name
    assert f'SIGNATURE_KEY = "{artifact["settings"]["signature"]}"' in kotlin
    # Delegate: the placement report's accelerator with no CPU fallback (NNAPI here), CPU fallback kept.
    nnapi = next(a for a in entry["placement"]["accelerators"] if a["accelerator"] == "nnapi")
    assert nnapi["fallback_fraction"] == 0.0
    assert "NnApiDelegate()" in kotlin and 'RECOMMENDED_ACCELERATOR = "nnapi"' in kotlin
    assert 'null, "cpu", labels)' in kotlin
    gradle = (out / "dependencies.gradle.kts").read_text()
    assert f'"com.google.ai.edge.litert:litert:{entry["toolchain"]["ai-edge-litert"]}"' in gradle


def test_android_full_int8_quant_params(full_int8_bundle, tmp_path):
    package_bundle(full_int8_bundle, "android", tmp_path / "android")
    kotlin = _kotlin(tmp_path / "android")
    artifact = read_manifest(full_int8_bundle)["targets"]["android-pixel8"]["artifact"]
    quant_in = artifact["inputs"][0]["quant"]
    quant_out = artifact["outputs"][0]["quant"]
    assert artifact["inputs"][0]["dtype"] == "uint8"
    assert f"IMAGE_QUANT_SCALE = {literal(quant_in['scale'])}f" in kotlin
    assert f"IMAGE_ZERO_POINT = {quant_in['zero_point']}" in kotlin
    assert f"LOGITS_QUANT_SCALE = {literal(quant_out['scale'])}f" in kotlin
    assert f"LOGITS_ZERO_POINT = {quant_out['zero_point']}" in kotlin
    assert "IMAGE_ZERO_POINT, 0, 255).toByte()" in kotlin  # uint8 saturation
    assert "buffer.get().toInt() and 0xFF" in kotlin  # uint8 output read unsigned


KOTLIN_STUBS = {
    "AndroidRes.kt": """package android.content.res
class AssetFileDescriptor : java.io.Closeable {
    val fileDescriptor: java.io.FileDescriptor get() = throw UnsupportedOperationException()
    val startOffset: Long get() = 0
    val declaredLength: Long get() = 0
    override fun close() {}
}
class AssetManager {
    fun openFd(name: String): AssetFileDescriptor = throw UnsupportedOperationException(name)
    fun open(name: String): java.io.InputStream = throw UnsupportedOperationException(name)
}
""",
    "AndroidContext.kt": """package android.content
abstract class Context { abstract val assets: android.content.res.AssetManager }
""",
    "Lite.kt": """package org.tensorflow.lite
interface Delegate : java.io.Closeable { override fun close() {} }
class Interpreter(model: java.nio.ByteBuffer, options: Options?) : AutoCloseable {
    constructor(file: java.io.File) : this(java.nio.ByteBuffer.allocate(file.length().toInt()), null)
    class Options {
        fun addDelegate(delegate: Delegate): Options = this
        fun setNumThreads(threads: Int): Options = this
    }
    fun runSignature(inputs: Map<String, Any>, outputs: Map<String, Any>, signatureKey: String) {}
    fun runForMultipleInputsOutputs(inputs: Array<Any>, outputs: Map<Int, Any>) {}
    override fun close() {}
}
""",
    "LiteVersion.kt": "package org.tensorflow.lite\nobject TensorFlowLite { fun runtimeVersion(): String = \"\" }\n",
    "AndroidLog.kt": "package android.util\nobject Log { @JvmStatic fun i(tag: String, msg: String): Int = 0 }\n",
    "Gpu.kt": "package org.tensorflow.lite.gpu\nclass GpuDelegate : org.tensorflow.lite.Delegate\n",
    "Nnapi.kt": "package org.tensorflow.lite.nnapi\nclass NnApiDelegate : org.tensorflow.lite.Delegate\n",
}
"""Signatures (no behaviour) of the Android and LiteRT Interpreter-API classes the generated code uses."""


def test_kotlin_compiles_against_stub_signatures(digits_bundle, full_int8_bundle, tmp_path):
    kotlinc = shutil.which("kotlinc")
    if kotlinc is None:
        pytest.skip("kotlinc not installed (Debian: apt-get install kotlin); Kotlin checked textually only")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in KOTLIN_STUBS.items():
        (stubs / name).write_text(text)
    sources = sorted(str(p) for p in stubs.iterdir())
    for i, bundle in enumerate((digits_bundle, full_int8_bundle)):
        package_bundle(bundle, "android", tmp_path / f"android{i}")
        runner = next((tmp_path / f"android{i}").rglob("*Runner.kt"))
        # Each runner in its own package: copy under a distinct package to compile both together.
        text = runner.read_text().replace("package edgepack.generated.digitscnn", f"package edgepack.generated.v{i}")
        (tmp_path / f"Runner{i}.kt").write_text(text)
        sources.append(str(tmp_path / f"Runner{i}.kt"))
    from edgepack.package.render import render_snippets

    (tmp_path / "Snippet.kt").write_text(render_snippets(read_manifest(digits_bundle))["kotlin/Run.kt"])
    sources.append(str(tmp_path / "Snippet.kt"))
    done = subprocess.run([kotlinc, "-nowarn", *sources, "-d", str(tmp_path / "classes")],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error:" in line]
    assert done.returncode == 0 and not errors, "\n".join(errors) or done.stderr[-2000:]


# --------------------------------------------------------------------------------------------------
# ios
# --------------------------------------------------------------------------------------------------


def _with_coreml_target(bundle: Path, tmp_path: Path) -> Path:
    """A copy of ``bundle`` with an iphone-15-pro target whose .mlpackage entry is built here.

    The Core ML exporter is not available in this build, so the artifact is a placeholder folder with a
    manifest-consistent file table; packaging copies it and generates the Swift around its I/O entry.
    """
    from edgepack.bundle.hashing import canonical_json, hash_tree
    from edgepack.bundle.writer import MANIFEST_NAME, SIGNATURE_NAME

    root = tmp_path / "with-coreml.edgepack"
    shutil.copytree(bundle, root)
    package = root / "artifacts/iphone-15-pro/model.mlpackage"
    (package / "Data/com.apple.CoreML").mkdir(parents=True)
    (package / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\n')
    (package / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"placeholder")
    manifest = read_manifest(root)
    host = manifest["targets"]["host-ort"]
    entry = copy.deepcopy(host)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    files = sorted(f"artifacts/iphone-15-pro/{p.relative_to(package.parent).as_posix()}"
                   for p in package.rglob("*") if p.is_file())
    entry.update(
        profile={"format": "mlpackage", "id": "iphone-15-pro", "name": "iPhone 15 Pro (A17 Pro)", "runtime": "coreml"},
        runnable_here="no: Core ML runs on macOS/iOS only",
        placement={"accelerators": [{"accelerator": "ane", "kind": "npu", "fallback_fraction": 0.0, "supported": 5,
                                     "fallback": []}], "total_ops": 5},
        toolchain={"coremltools": "9.0"},
    )
    from edgepack.exporters.coreml.exporter import package_sha256

    entry["artifact"] = dict(host["artifact"], format="mlpackage", path="artifacts/iphone-15-pro/model.mlpackage",
                             files=files, precision="fp16", settings={}, sha256=package_sha256(package))
    entry["artifact"]["inputs"] = [dict(host["artifact"]["inputs"][0], name="pixels", shape=[1, 3, 8, 8],
                                        preprocess={"scale": 1 / 255, "mean": mean, "std": std, "description": "imagenet"})]
    manifest["targets"]["iphone-15-pro"] = entry
    manifest["files"] = hash_tree(root, exclude=(MANIFEST_NAME, SIGNATURE_NAME))
    (root / MANIFEST_NAME).write_bytes(canonical_json(manifest))
    return root


def test_ios_swift_package(digits_bundle, tmp_path):
    bundle = _with_coreml_target(digits_bundle, tmp_path)
    result = package_bundle(bundle, "ios", tmp_path / "ios")
    out = tmp_path / "ios"
    assert result.targets == ["iphone-15-pro"]
    swift = (out / "Sources/DigitsCnn/DigitsCnnRunner.swift").read_text()
    package = (out / "Package.swift").read_text()
    assert '.process("Resources/model.mlpackage")' in package and '.copy("Resources/labels.txt")' in package
    assert (out / "Sources/DigitsCnn/Resources/model.mlpackage/Data/com.apple.CoreML/model.mlmodel").read_bytes() == b"placeholder"
    assert result.bundle_sha256 in swift
    assert "recommendedComputeUnits: MLComputeUnits = .cpuAndNeuralEngine" in swift
    assert "configuration.computeUnits = computeUnits" in swift
    assert 'features["pixels"]' in swift and 'result.featureValue(for: "logits")' in swift
    assert "pixelsShape: [Int] = [1, 3, 8, 8]" in swift
    assert f"pixelsScale: Float = {literal(1 / 255)}" in swift
    assert "pixelsMean: [Float] = [0.485, 0.456, 0.406]" in swift
    assert "pixelsStd: [Float] = [0.229, 0.224, 0.225]" in swift
    assert "let c = (i / 64) % 3" in swift  # NCHW channel index for a 3x8x8 image
    assert "pixelsValues(from pixelBuffer: CVPixelBuffer)" in swift  # image input helper
    assert swift.count("{") == swift.count("}")


# --------------------------------------------------------------------------------------------------
# behaviour common to all platforms
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["android", "python"])
def test_output_is_deterministic_and_replaces_earlier_package(digits_bundle, tmp_path, platform):
    package_bundle(digits_bundle, platform, tmp_path / "a")
    first = _tree(tmp_path / "a")
    package_bundle(digits_bundle, platform, tmp_path / "a")  # replaces its own earlier output
    package_bundle(digits_bundle, platform, tmp_path / "b")
    assert _tree(tmp_path / "a") == first == _tree(tmp_path / "b")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_missing_artifact_is_one_clear_error(digits_bundle, tmp_path):
    with pytest.raises(UnsupportedError, match=r"no target with a mlpackage artifact for --platform ios"):
        package_bundle(digits_bundle, "ios", tmp_path / "ios")
    assert not (tmp_path / "ios").exists()
    with pytest.raises(InputError, match="--target host-ort: has a onnx artifact"):
        package_bundle(digits_bundle, "android", tmp_path / "a", target="host-ort")
    with pytest.raises(InputError, match="unknown platform"):
        package_bundle(digits_bundle, "windows", tmp_path / "w")


def test_refuses_to_replace_a_foreign_folder(digits_bundle, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an edgepack package"):
        package_bundle(digits_bundle, "python", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_tampered_bundle_is_not_packaged(digits_bundle, tmp_path):
    from edgepack.errors import BundleError

    copy_ = tmp_path / "b.edgepack"
    shutil.copytree(digits_bundle, copy_)
    (copy_ / "artifacts/host-ort/model.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="modified"):
        package_bundle(copy_, "python", tmp_path / "out")


def test_cli_package(digits_bundle, tmp_path):
    from typer.testing import CliRunner

    runner = CliRunner()
    done = runner.invoke(app, ["package", str(digits_bundle), "--platform", "python", "--out", str(tmp_path / "p"), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["result"]["targets"] == ["host-ort", "x86-openvino", "android-pixel8"]
    done = runner.invoke(app, ["package", str(digits_bundle), "--platform", "ios", "--out", str(tmp_path / "i")])
    assert done.exit_code == 2
    assert "edgepack: error:" in done.stderr and "mlpackage" in done.stderr


@pytest.mark.slow
def test_mobilenet_v2_all_platforms(tmp_path, one_torch_thread):
    # The packaging of each platform is under test, not the recipe search: one float recipe every target takes.
    bundle = api.export("torchvision:mobilenet_v2", ["host-ort", "android-pixel8", "iphone-15-pro"], out=tmp_path / "b",
                        random_weights=True, recipe_chain=["fp16", "fp32"]).bundle
    manifest = read_manifest(bundle)
    spec = manifest["source"]["inputs"][0]
    pre = spec["preprocess"]
    package_bundle(bundle, "python", tmp_path / "py")
    module = import_generated(next((tmp_path / "py").glob("*_runner.py")))
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 255, size=(2, 3, 224, 224)).astype(np.float32)
    runner_cls = getattr(module, model_names(manifest)["runner_class"])
    mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
    ready = ((raw * np.float32(pre["scale"]) - mean) / std).astype(np.float32)
    for target in ("host-ort", "android-pixel8"):
        got = runner_cls(target).run({spec["name"]: raw})
        want = _host_predictor(bundle, target)({spec["name"]: ready})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    package_bundle(bundle, "android", tmp_path / "android")
    kotlin = _kotlin(tmp_path / "android")
    tfl = manifest["targets"]["android-pixel8"]["artifact"]["inputs"][0]
    const = re.sub(r"\W", "_", tfl["name"]).upper()
    assert f"_SHAPE = intArrayOf({', '.join(str(d) for d in tfl['shape'])})" in kotlin
    assert f"_MEAN = floatArrayOf({', '.join(literal(v) + 'f' for v in pre['mean'])})" in kotlin
    assert f"_STD = floatArrayOf({', '.join(literal(v) + 'f' for v in pre['std'])})" in kotlin
    assert "% 3" in kotlin  # per-channel preprocessing index (NHWC: channel is the last axis)
    coreml = manifest["targets"]["iphone-15-pro"]
    assert coreml["status"] == "ok", coreml["error"]
    package_bundle(bundle, "ios", tmp_path / "ios")
    swift = next((tmp_path / "ios").rglob("*Runner.swift")).read_text()
    ios_input = coreml["artifact"]["inputs"][0]
    assert f'features["{ios_input["name"]}"]' in swift and "configuration.computeUnits = computeUnits" in swift
    assert all(literal(v) in swift for v in pre["mean"]) and all(literal(v) in swift for v in pre["std"])


def test_snippets_for_each_language_with_an_artifact(digits_bundle, tmp_path):
    from edgepack.package.render import render_snippets

    manifest = read_manifest(digits_bundle)
    snippets = render_snippets(manifest)
    assert sorted(snippets) == ["kotlin/Run.kt", "python/run.py"]  # no Core ML target, no Swift
    assert render_snippets(copy.deepcopy(manifest)) == snippets
    kotlin = snippets["kotlin/Run.kt"]
    assert '"image" to image' in kotlin and '"output_0" to logits' in kotlin and '"serving_default"' in kotlin
    # The Python snippet runs the preferred host artifact (ONNX) and matches its predictor.
    path = tmp_path / "run.py"
    path.write_text(snippets["python/run.py"])
    module = import_generated(path)
    raw = _digits_raw(4)
    got = module.run(str(digits_bundle / "artifacts/host-ort/model.onnx"), raw)
    want = _host_predictor(digits_bundle, "host-ort")({"image": raw * np.float32(0.0625)})
    np.testing.assert_array_equal(got["logits"], want["logits"])
    with_coreml = read_manifest(_with_coreml_target(digits_bundle, tmp_path))
    swift = render_snippets(with_coreml)["swift/Run.swift"]
    assert '"pixels": MLFeatureValue(multiArray: pixels)' in swift and '"logits"' in swift


@pytest.mark.slow
def test_ios_package_from_real_coreml_export(tmp_path, one_torch_thread):
    bundle = api.export("demo:digits", ["iphone-15-pro"], out=tmp_path / "b").bundle
    entry = read_manifest(bundle)["targets"]["iphone-15-pro"]
    assert entry["status"] == "ok", entry["error"]
    package_bundle(bundle, "ios", tmp_path / "ios")
    resources = tmp_path / "ios/Sources/DigitsCnn/Resources"
    mlpackage = [f for f in entry["artifact"]["files"] if "/model.mlpackage/" in f]
    assert mlpackage
    for name in mlpackage:
        relative = name.split("/model.mlpackage/", 1)[1]
        assert (resources / "model.mlpackage" / relative).read_bytes() == (bundle / name).read_bytes()
    swift = (tmp_path / "ios/Sources/DigitsCnn/DigitsCnnRunner.swift").read_text()
    spec = entry["artifact"]["inputs"][0]
    assert f'features["{spec["name"]}"]' in swift
    assert f'withExtension: "mlpackage"' in swift and "configuration.computeUnits = computeUnits" in swift


def test_the_converters_logs_travel_in_the_bundle_and_failure_reasons_name_them(digits_bundle, tmp_path):
    """A failed onnx2tf run used to be reported as '(log: /tmp/<deleted work dir>/worker.log)'."""
    from edgepack.api import _toolchain_logs
    from edgepack.pipeline import Attempt, TargetResult
    from edgepack.targets.registry import load_registry

    manifest = read_manifest(digits_bundle)
    entry = manifest["targets"]["android-pixel8"]
    logs = [r for r in entry["reports"] if r.startswith("reports/android-pixel8/logs/")]
    assert logs and all(r.endswith(".log") for r in logs)
    assert all(r in manifest["files"] and (digits_bundle / r).stat().st_size > 0 for r in logs)
    assert "onnx2tf" in (digits_bundle / logs[0]).read_text()
    assert api.verify(digits_bundle).files_checked >= len(manifest["files"])  # raises when a file differs
    # the reason of a failed attempt names the copy in the bundle, not the temporary work dir
    workdir = tmp_path / "work" / "android-pixel8"
    (workdir / "int8" / "onnx2tf").mkdir(parents=True)
    (workdir / "int8" / "onnx2tf" / "worker.log").write_text("x" * 10 + "\nValueError: the converter's own words\n")
    result = TargetResult(load_registry().get("android-pixel8"), "failed")
    result.attempts.append(Attempt("int8", "error", f"onnx2tf failed (log: {workdir}/int8/onnx2tf/worker.log)"))
    files = _toolchain_logs(result, workdir, tmp_path / "reports")
    assert list(files) == ["reports/android-pixel8/logs/int8/onnx2tf/worker.log"]
    assert result.attempts[0].reason == "onnx2tf failed (log: reports/android-pixel8/logs/int8/onnx2tf/worker.log)"
