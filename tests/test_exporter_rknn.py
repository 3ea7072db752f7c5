"""RKNN: RKNN-Toolkit2 in its own venv (installed from the package registry by ``edgepack toolchains install rknn``),
``.rknn`` for the RK3588 NPU, parity and the gate on the toolkit's x86 simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack import api
from edgepack.bundle.verify import verify_bundle
from edgepack.compress.recipe import load_recipes
from edgepack.contract.metadata import Contract
from edgepack.errors import UnsupportedError
from edgepack.exporters.base import NotRunnable
from edgepack.exporters.registry import get_exporter
from edgepack.exporters.rknn.env import RKNN_ENV, TOOLKIT_VERSION
from edgepack.models.loaders import load_source
from edgepack.models.reference import reference_predictor
from edgepack.targets.registry import load_registry
from edgepack.toolchains.isolated import TOOLCHAINS_ENV

TARGET = "rk3588-npu"


@pytest.fixture(scope="module")
def toolchain(isolated_toolchains):
    """The rknn venv, installed once from the package registry (kept between runs in the toolchains folder)."""
    return isolated_toolchains[RKNN_ENV.name]


@pytest.fixture(scope="module")
def digits_bundle(toolchain, tmp_path_factory, one_torch_thread):
    return api.export("demo:digits", [TARGET], out=tmp_path_factory.mktemp("rknn"))


def test_the_toolchain_venv_has_the_pinned_toolkit(toolchain):
    assert toolchain["rknn-toolkit2"] == TOOLKIT_VERSION and toolchain["numpy"] == "1.26.4"


def test_digits_ships_int8_with_parity_on_the_simulator(digits_bundle):
    entry = digits_bundle.manifest["targets"][TARGET]
    assert entry["status"] == "ok" and entry["recipe"] == "int8", entry.get("attempts")
    assert entry["runnable_here"] == "checked on RKNN-Toolkit2's x86 simulator (the NPU's numerics; no latency)"
    assert entry["parity"]["passed"] and entry["parity"]["mean_cosine"] > 0.999 and entry["parity"]["top1_agreement"] >= 0.95
    assert entry["gate"]["passed"] and entry["gate"]["drop"] <= 0.01
    artifact = entry["artifact"]
    assert artifact["format"] == "rknn" and [Path(f).name for f in artifact["files"]] == ["model.rknn", "model.contract.json"]
    settings = artifact["settings"]
    assert settings["target_platform"] == "rk3588" and settings["quantized_algorithm"] == "normal"
    assert settings["quantized_method"] == "channel" and settings["calibration_samples"] == 128
    assert entry["toolchain"]["rknn-toolkit2"] == TOOLKIT_VERSION
    contract = Contract.from_json((digits_bundle.bundle / "artifacts" / TARGET / "model.contract.json").read_text())
    assert list(contract.labels) == [str(i) for i in range(10)] and contract.recipe == "int8"
    placement = {a["accelerator"]: a for a in entry["placement"]["accelerators"]}
    assert placement["npu"]["fallback"] == []  # Conv, Relu, MaxPool, AveragePool, Gemm... are all in Rockchip's table
    verify_bundle(digits_bundle.bundle)


def test_fp16_matches_the_source_within_the_fp16_tolerance(toolchain, tmp_path, one_torch_thread):
    result = api.export("demo:digits", [TARGET], out=tmp_path, recipe_chain=["fp16"])
    entry = result.manifest["targets"][TARGET]
    assert entry["status"] == "ok" and entry["artifact"]["precision"] == "fp16", entry.get("attempts")
    assert entry["parity"]["min_cosine"] >= 0.999 and entry["parity"]["max_rel_error"] <= 2e-2
    assert entry["artifact"]["settings"]["quantization"] == "none (fp16 on the NPU)"


def test_the_calibration_method_reaches_the_toolkit(toolchain, tmp_path, one_torch_thread):
    """entropy -> kl_divergence: the .rknn differs from the min-max one and still passes parity."""
    result = api.export("demo:digits", [TARGET], out=tmp_path, recipe_chain=["int8-entropy"])
    entry = result.manifest["targets"][TARGET]
    assert entry["status"] == "ok" and entry["artifact"]["settings"]["quantized_algorithm"] == "kl_divergence"
    assert entry["parity"]["passed"]


def test_the_simulator_predictor_runs_a_batch_sample_by_sample(toolchain, tmp_path):
    source = load_source("demo:digits")
    exporter = get_exporter("rknn")
    profile = load_registry().get(TARGET)
    artifact = exporter.export(source, profile, load_recipes().get("fp16"), None, tmp_path / "work")
    predictor = exporter.predictor(artifact, source)
    batch = {"image": source.extra["eval"].inputs["image"][:5]}
    got = predictor(batch)["logits"]
    want = reference_predictor(source)(batch)["logits"]
    assert got.shape == (5, 10) and (got.argmax(1) == want.argmax(1)).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05 * float(np.abs(want).max()))


def test_an_artifact_from_another_session_is_not_runnable_here(digits_bundle):
    from edgepack.device_bench.runners.base import artifact_from_entry

    entry = digits_bundle.manifest["targets"][TARGET]
    artifact = artifact_from_entry(digits_bundle.bundle, TARGET, "rknn", entry["artifact"])
    predictor = get_exporter("rknn").predictor(artifact, load_source("demo:digits"))
    assert isinstance(predictor, NotRunnable) and "simulator runs only a model it built" in predictor.reason


def test_a_missing_toolchain_is_one_line_naming_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(TOOLCHAINS_ENV, str(tmp_path / "empty"))
    result = api.export("demo:digits", [TARGET], out=tmp_path / "out", recipe_chain=["fp16"])
    entry = result.manifest["targets"][TARGET]
    assert entry["status"] == "failed"
    assert "the rknn toolchain is not installed" in entry["error"] and "edgepack toolchains install rknn" in entry["error"]


def test_recipes_the_npu_cannot_honour_are_refused_with_the_reason():
    book, exporter = load_recipes(), get_exporter("rknn")
    assert "Rockchip NPUs compute in fp16 (the toolkit's float build) or int8" in exporter.refusal(book.get("fp32"))
    assert "integer model I/O" in exporter.refusal(book.get("int8-full"))
    assert "int16 activations" in exporter.refusal(book.get("int8-a16w8"))
    assert "calibration method 'percentile'" in exporter.refusal(
        book.get("int8").model_copy(update={"calibration": book.get("int8").calibration.model_copy(update={"method": "percentile"})}))
    assert "hybrid quantization" in exporter.refusal(book.get("int8").model_copy(update={"exclude": ["/conv/Conv"]}))
    for name in ("int8", "int8-entropy", "int8-mse", "fp16"):
        assert exporter.refusal(book.get(name)) is None, name


def test_a_profile_whose_family_is_no_rknn_platform_is_refused(toolchain, tmp_path):
    profile = load_registry().get(TARGET).model_copy(update={"family": "rk9999"})
    with pytest.raises(UnsupportedError, match="family 'rk9999' is not an RKNN target platform"):
        get_exporter("rknn").export(load_source("demo:digits"), profile, load_recipes().get("fp16"), None, tmp_path)


@pytest.mark.slow
def test_mobilenet_v2_with_recalibrated_batchnorm_ships_int8(toolchain, tmp_path, one_torch_thread):
    """A torchvision network with BatchNorm statistics re-estimated on photo-like data (random weights would
    otherwise give near-constant outputs), int8 on the NPU with parity on the simulator."""
    from edgepack.models.sample import recalibrate_batchnorm

    source = recalibrate_batchnorm(load_source("torchvision:mobilenet_v2", random_weights=True))
    with torch.no_grad():
        result = api.export(source, [TARGET], out=tmp_path, recipe_chain=["int8", "fp16"])
    entry = result.manifest["targets"][TARGET]
    assert entry["status"] == "ok" and entry["recipe"] == "int8", entry.get("attempts")
    assert entry["parity"]["passed"] and entry["parity"]["mean_cosine"] >= 0.98
    assert entry["gate"]["passed"] and entry["artifact"]["inputs"][0]["shape"] == [1, 3, 224, 224]
