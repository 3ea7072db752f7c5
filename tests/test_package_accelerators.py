"""package/accelerators.py: the Kotlin delegate construction and Core ML compute units generated apps use come
from the target profile (``[accelerators.<id>.litert_delegate]``, ``coreml_compute_units``), so a new
accelerator is one TOML file and no code change."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepack.errors import ProfileError
from edgepack.package.accelerators import (
    KotlinDelegate,
    app_facts,
    coreml_compute_units,
    kotlin_delegate,
    recommended_accelerator,
)
from edgepack.package.platforms import _compute_units, _delegate_choice
from edgepack.targets.registry import load_registry

GPU = KotlinDelegate(
    "gpu", ("org.tensorflow.lite.gpu.GpuDelegate",), "GpuDelegate()", ("com.google.ai.edge.litert:litert-gpu",)
)
NNAPI = KotlinDelegate("nnapi", ("org.tensorflow.lite.nnapi.NnApiDelegate",), "NnApiDelegate()")


def test_shipped_profiles_carry_the_kotlin_delegates(registry) -> None:
    pixel8, sd8g3 = registry.get("android-pixel8"), registry.get("android-snapdragon-8gen3")
    assert kotlin_delegate(pixel8, "gpu") == GPU and kotlin_delegate(sd8g3, "gpu") == GPU
    assert kotlin_delegate(pixel8, "nnapi") == NNAPI
    assert kotlin_delegate(sd8g3, "htp") is None  # Qualcomm's QNN delegate is not on Google Maven: CPU path
    assert kotlin_delegate(pixel8, "cpu") is None  # XNNPACK is the Interpreter's own CPU path
    assert kotlin_delegate(pixel8, "no-such-accelerator") is None
    assert kotlin_delegate(registry.get("iphone-15-pro"), "gpu") is None


def test_shipped_profiles_carry_the_compute_units(registry) -> None:
    for target in ("iphone-15-pro", "mac-apple-silicon"):
        profile = registry.get(target)
        assert coreml_compute_units(profile, "ane") == ".cpuAndNeuralEngine"
        assert coreml_compute_units(profile, "gpu") == ".cpuAndGPU"
        assert coreml_compute_units(profile, "cpu") == ".cpuOnly"
        assert coreml_compute_units(profile, "htp") is None
    assert coreml_compute_units(registry.get("android-pixel8"), "gpu") is None


NEW_DEVICE = (Path(__file__).parent / "data" / "acme-phone.toml").read_text()
"""A device the code has never heard of (shared with the other accelerator-facts tests)."""


def _registry(tmp_path: Path, text: str = NEW_DEVICE):
    path = tmp_path / "acme-phone.toml"
    path.write_text(text)
    return load_registry(extra=[path])


def test_a_new_accelerator_reaches_the_kotlin_delegate_setup(tmp_path: Path) -> None:
    profile = _registry(tmp_path).get("acme-phone")
    assert kotlin_delegate(profile, "acmenpu") == KotlinDelegate(
        "acmenpu",
        ("com.acme.npu.AcmeNpuDelegate", "com.acme.npu.AcmeNpuDelegate.Options"),
        'AcmeNpuDelegate(AcmeNpuDelegate.Options().setMode("fast"))',
        ("com.acme.npu:litert-acme-npu",),
    )
    assert coreml_compute_units(profile, "acmenpu") == ".cpuAndNeuralEngine"
    # extends: one fact overridden, the rest of the parent's delegate table kept
    nnapi = kotlin_delegate(profile, "nnapi")
    assert nnapi == KotlinDelegate("nnapi", NNAPI.imports, "NnApiDelegate(NnApiDelegate.Options().setUseNnapiCpu(false))")
    assert profile.accelerators["nnapi"].litert_delegate.benchmark_flags == ["--use_nnapi=true"]
    assert kotlin_delegate(profile, "gpu") == GPU
    placement = {"accelerators": [{"accelerator": "cpu", "kind": "cpu", "fallback_fraction": 0.0, "supported": 2},
                                  {"accelerator": "acmenpu", "kind": "npu", "fallback_fraction": 0.0, "supported": 2}]}
    assert recommended_accelerator(placement) == "acmenpu"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (("maven = [", 'gradle = ["x:y"]\nmaven = ['), "accelerators.acmenpu.litert_delegate.gradle: unknown key"),
        (('kotlin_create = \'AcmeNpuDelegate(AcmeNpuDelegate.Options().setMode("fast"))\'\n', ""),
         "kotlin_imports and maven need kotlin_create"),
        (('coreml_compute_units = "cpuAndNeuralEngine"', 'coreml_compute_units = ".cpuAndNeuralEngine"'),
         "accelerators.acmenpu.coreml_compute_units: "),
        (("[accelerators.nnapi.litert_delegate]\n", "[accelerators.nnapi.litert_delegate]\nkotlin = 'x'\n"),
         "accelerators.nnapi.litert_delegate.kotlin: unknown key"),
    ],
)
def test_bad_generated_code_facts_are_refused(tmp_path: Path, patch: tuple[str, str], expected: str) -> None:
    assert patch[0] in NEW_DEVICE
    with pytest.raises(ProfileError) as info:
        _registry(tmp_path, NEW_DEVICE.replace(*patch))
    assert "acme-phone.toml: " in str(info.value) and expected in str(info.value)


ACME_EVERYWHERE = {"accelerators": [{"accelerator": "cpu", "kind": "cpu", "fallback_fraction": 0.0, "supported": 2},
                                    {"accelerator": "acmenpu", "kind": "npu", "fallback_fraction": 0.0, "supported": 2}]}


def test_the_manifest_carries_the_facts_so_a_user_profile_packages_without_its_toml(tmp_path: Path) -> None:
    profile = _registry(tmp_path).get("acme-phone")
    recorded = app_facts(profile)
    assert {"acmenpu", "gpu", "nnapi"} <= set(recorded)
    assert recorded["acmenpu"]["coreml_compute_units"] == "cpuAndNeuralEngine"
    entry = {"profile": {"id": "acme-phone", "name": profile.name, "accelerators": recorded},
             "placement": ACME_EVERYWHERE}
    delegate, why = _delegate_choice(entry, "acme-phone")  # acme-phone is in no shipped profile
    assert delegate == kotlin_delegate(profile, "acmenpu") and why == ""
    units, why = _compute_units(entry, "acme-phone")
    assert units == ".cpuAndNeuralEngine" and "acmenpu" in why


def test_a_bundle_without_recorded_facts_uses_its_shipped_profile() -> None:
    everywhere = {"accelerators": [{"accelerator": "gpu", "kind": "gpu", "fallback_fraction": 0.0, "supported": 3}]}
    entry = {"profile": {"id": "android-pixel8", "name": "Pixel 8"}, "placement": everywhere}
    assert _delegate_choice(entry, "android-pixel8") == (GPU, "")
    unknown = {"profile": {"id": "gone-phone", "name": "Gone"}, "placement": everywhere}
    delegate, why = _delegate_choice(unknown, "gone-phone")
    assert delegate is None and "not on Google Maven" in why
