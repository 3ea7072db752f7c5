"""ExecuTorch (android-executorch): real torch.export -> XNNPACK lowering -> .pte, run in ExecuTorch's Python
runtime for parity, the gate, placement from the lowered program, and the generated Python runner."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from generated import import_generated
from edgepack import api
from edgepack.bundle.verify import verify_bundle
from edgepack.contract.metadata import Contract
from edgepack.errors import UnsupportedError
from edgepack.exporters.executorch.exporter import ExecutorchExporter
from edgepack.exporters.executorch.graph import CONTRACT, DESCRIPTOR, read_descriptor
from edgepack.exporters.executorch.predictor import ExecutorchPredictor
from edgepack.models.loaders import load_source
from edgepack.models.reference import reference_predictor
from edgepack.models.source import ModelSource, TensorSpec
from edgepack.package.build import package_bundle
from edgepack.targets.placement import placement_for

TARGET = "android-executorch"


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("executorch")
    return api.export("demo:digits", [TARGET], out=out)


@pytest.fixture(scope="module")
def digits():
    return load_source("demo:digits")


def test_digits_ships_int8_with_parity_measured_on_executorch(digits_bundle):
    assert digits_bundle.ok, {r.profile.id: r.error for r in digits_bundle.results}
    manifest = json.loads((digits_bundle.bundle / "manifest.json").read_text())
    entry = manifest["targets"][TARGET]
    assert entry["status"] == "ok" and entry["runnable_here"] == "yes"
    assert entry["recipe"] == "int8" and entry["artifact"]["precision"] == "int8"
    assert entry["parity"]["passed"] and entry["parity"]["min_cosine"] > 0.99
    assert entry["parity"]["top1_agreement"] >= 0.95
    gate = entry["gate"]
    assert gate["passed"] and gate["metric"] == "top1" and gate["value"] >= 0.95 and gate["drop"] <= 0.01
    artifact = entry["artifact"]
    assert artifact["format"] == "pte" and artifact["path"].endswith("model.pte")
    names = {Path(f).name for f in artifact["files"]}
    assert names == {"model.pte", DESCRIPTOR, CONTRACT}
    settings = artifact["settings"]
    assert settings["quantizer"].startswith("XNNPACKQuantizer") and settings["calibration_samples"] > 0
    # the digits CNN lowers completely: every op in the XNNPACK delegate, none left on the portable kernels
    assert settings["delegation"]["portable"] == [] and settings["delegation"]["delegated"]["aten.convolution.default"] == 3
    assert entry["toolchain"]["executorch"] == "1.5.1"
    placement = entry["placement"]
    assert placement["vocabulary"] == "executorch" and placement["cpu_fallback_fraction"] == 0.0
    verify_bundle(digits_bundle.bundle)


def test_pte_matches_torch_and_carries_its_contract(digits_bundle, digits):
    artifact_dir = digits_bundle.bundle / "artifacts" / TARGET
    predictor = ExecutorchPredictor(artifact_dir / "model.pte", tuple(digits.inputs), tuple(digits.outputs))
    reference = reference_predictor(digits)
    images = digits.extra["eval"].inputs["image"][:16]
    got = predictor({"image": images})["logits"]  # batch 16 on a batch-1 program: run per sample
    want = reference({"image": images})["logits"]
    assert got.shape == want.shape == (16, 10)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() > 0.98
    contract = Contract.from_json((artifact_dir / CONTRACT).read_text())
    assert contract.format == "pte" and contract.precision == "int8" and contract.target == TARGET
    assert contract.labels == tuple(str(i) for i in range(10))
    assert contract.inputs[0].preprocess["scale"] == pytest.approx(1 / 16)
    descriptor = read_descriptor(artifact_dir / "model.pte")
    assert descriptor["program"] == "model.pte" and len(descriptor["program_sha256"]) == 64


def test_fp32_program_matches_torch_exactly(digits, registry, recipes, tmp_path):
    exporter = ExecutorchExporter()
    artifact = exporter.export(digits, registry.get(TARGET), recipes.get("fp32"), None, tmp_path)
    predictor = exporter.predictor(artifact, digits)
    images = digits.extra["eval"].inputs["image"][:8]
    got = predictor({"image": images})["logits"]
    want = reference_predictor(digits)({"image": images})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert artifact.settings["portable_ops"] == 0


class _PartlyDelegated(torch.nn.Module):
    """A conv XNNPACK takes, then a cumsum it has no config for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).flatten(1).cumsum(-1)


def _partly_delegated() -> ModelSource:
    torch.manual_seed(0)
    return ModelSource(kind="factory", uri="test:partly", name="partly", sha256="0" * 64,
                       inputs=[TensorSpec("x", (1, 3, 6, 6), layout="NCHW")], outputs=[TensorSpec("y", (1, 64))],
                       torch_module=_PartlyDelegated().eval())


def test_placement_reads_the_lowered_program_with_portable_reasons(registry, recipes, tmp_path):
    source = _partly_delegated()
    profile = registry.get(TARGET)
    exporter = ExecutorchExporter()
    artifact = exporter.export(source, profile, recipes.get("fp32"), None, tmp_path)
    delegation = artifact.settings["delegation"]
    assert delegation["delegated"]["aten.convolution.default"] == 1
    assert delegation["portable"] == [{"op": "aten_cumsum_default", "type": "aten.cumsum.default",
                                       "reason": "the XNNPACK partitioner has no config for aten.cumsum.default"}]
    ops = exporter.graph_ops(artifact.path, "pte")
    assert [op.op_type for op in ops][:2] == ["aten.convolution.default", "aten.relu.default"]
    report = placement_for(profile, "fp32", artifact.path, "pte", None)
    assert report is not None and report.vocabulary == "executorch"
    xnnpack = report.accelerators[0]
    assert xnnpack.accelerator == "xnnpack"
    # the partitioner's own decision and words, not a guess from the op table
    assert xnnpack.fallback == [{"op": "aten_cumsum_default", "type": "aten.cumsum.default",
                                 "reason": "the XNNPACK partitioner has no config for aten.cumsum.default"}]
    assert {op.placed_on for op in ops} == {"xnnpack", "portable"}
    x = torch.randn(1, 3, 6, 6)
    got = exporter.predictor(artifact, source)({"x": x.numpy()})["y"]
    np.testing.assert_allclose(got, source.torch_module(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_only_source_is_refused_in_one_line(registry, recipes, tmp_path):
    source = ModelSource(kind="onnx", uri="model.onnx", name="model", sha256="0" * 64,
                         inputs=[TensorSpec("x", (1, 3, 8, 8))], outputs=[TensorSpec("y", (1, 10))],
                         onnx_path=tmp_path / "model.onnx")
    with pytest.raises(UnsupportedError) as caught:
        ExecutorchExporter().export(source, registry.get(TARGET), recipes.get("fp32"), None, tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message and "ONNX file" in message and "PyTorch model" in message


def test_recipes_it_cannot_apply_are_refused(recipes):
    exporter = ExecutorchExporter()
    assert exporter.refusal(recipes.get("fp32")) is None
    assert exporter.refusal(recipes.get("int8")) is None
    assert exporter.refusal(recipes.get("int8-dynamic")) is None
    assert "fp16" in exporter.refusal(recipes.get("fp16"))
    assert "exclusions" in exporter.refusal(recipes.get("int8").model_copy(update={"exclude": ["/conv/Conv"]}))


def test_python_package_runs_the_pte(digits_bundle, digits, tmp_path):
    out = tmp_path / "pkg"
    package_bundle(digits_bundle.bundle, "python", out)
    assert (out / "models" / TARGET / "model.pte").is_file() and (out / "models" / TARGET / CONTRACT).is_file()
    assert "executorch==1.5.1" in (out / "requirements.txt").read_text()
    module_file = next(out.glob("*_runner.py"))
    module = import_generated(module_file)
    runner_class = next(getattr(module, n) for n in dir(module) if n.endswith("Runner"))
    runner = runner_class(TARGET)
    assert runner.contract is not None and runner.contract["format"] == "pte"
    assert runner.labels == [str(i) for i in range(10)]
    raw = np.asarray(digits.extra["eval"].inputs["image"][:4] * 16.0, dtype=np.float32)  # undo the demo's scaling
    outputs = runner.run({"image": raw})
    want = reference_predictor(digits)({"image": digits.extra["eval"].inputs["image"][:4]})["logits"]
    assert outputs["logits"].shape == (4, 10)
    assert (outputs["logits"].argmax(1) == want.argmax(1)).all()


def test_android_package_uses_the_module_api(digits_bundle, tmp_path):
    """``package --platform android`` on an ExecuTorch target: Module API runner, executorch-android pinned to the
    exported version, the program and its contract as assets (kotlinc compiles it in test_package.py)."""
    out = tmp_path / "android"
    package_bundle(digits_bundle.bundle, "android", out, target=TARGET)
    kotlin = next(out.rglob("*Runner.kt")).read_text()
    manifest = json.loads((digits_bundle.bundle / "manifest.json").read_text())
    artifact = manifest["targets"][TARGET]["artifact"]
    assert "Module.load(file.absolutePath)" in kotlin and "val IMAGE_SHAPE = longArrayOf(1, 1, 8, 8)" in kotlin
    assert f'const val ARTIFACT_SHA256 = "{artifact["sha256"]}"' in kotlin and "org.tensorflow" not in kotlin
    gradle = (out / "dependencies.gradle.kts").read_text()
    assert 'implementation("org.pytorch:executorch-android:1.5.1")' in gradle and "litert" not in gradle
    assets = sorted(p.name for p in out.glob("src/main/assets/*/*"))
    assert "model.pte" in assets and CONTRACT in assets and "labels.txt" in assets, assets
    assert "ExecuTorch" in (out / "README.md").read_text()


EXECUTORCH_KOTLIN_STUBS = {
    "Android.kt": """package android.content
abstract class Context {
    abstract val assets: android.content.res.AssetManager
    abstract val filesDir: java.io.File
}
""",
    "AndroidRes.kt": """package android.content.res
class AssetManager { fun open(name: String): java.io.InputStream = throw UnsupportedOperationException(name) }
""",
    "Json.kt": """package org.json
class JSONArray { fun length(): Int = 0; fun getString(i: Int): String = "" }
class JSONObject(text: String) { fun optJSONArray(name: String): JSONArray? = null }
""",
    "Executorch.kt": """package org.pytorch.executorch
class Tensor {
    val dataAsFloatArray: FloatArray get() = FloatArray(0)
    companion object { @JvmStatic fun fromBlob(data: FloatArray, shape: LongArray): Tensor = Tensor() }
}
class EValue {
    fun toTensor(): Tensor = Tensor()
    companion object { @JvmStatic fun from(tensor: Tensor): EValue = EValue() }
}
class Module {
    fun forward(vararg inputs: EValue): Array<EValue> = arrayOf()
    fun destroy() {}
    companion object { @JvmStatic fun load(path: String): Module = Module() }
}
""",
}
"""Signatures (no behaviour) of the Android, org.json and ExecuTorch Module-API classes the runner uses."""


def test_android_runner_compiles_against_stub_signatures(digits_bundle, tmp_path):
    kotlinc = shutil.which("kotlinc")
    if kotlinc is None:
        pytest.skip("kotlinc not installed (Debian: apt-get install kotlin); Kotlin checked textually only")
    package_bundle(digits_bundle.bundle, "android", tmp_path / "android", target=TARGET)
    sources = [str(next((tmp_path / "android").rglob("*Runner.kt")))]
    for name, text in EXECUTORCH_KOTLIN_STUBS.items():
        (tmp_path / name).write_text(text)
        sources.append(str(tmp_path / name))
    done = subprocess.run([kotlinc, "-nowarn", *sources, "-d", str(tmp_path / "classes")],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error:" in line]
    assert done.returncode == 0 and not errors, "\n".join(errors) or done.stderr[-2000:]
