"""Target registry: every shipped profile loads; broken profiles name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepack.errors import ProfileError, UnknownTargetError
from edgepack.exporters.registry import available_runtimes
from edgepack.targets.registry import PROFILES_DIR, load_registry

REQUIRED = {
    "host-ort", "x86-openvino", "jetson-orin", "jetson-orin-nano", "android-pixel8", "android-snapdragon-8gen3",
    "iphone-15-pro", "mac-apple-silicon", "coral-edgetpu", "linux-arm64-cpu",
}
# Runtimes whose exporters arrive with later work; a profile naming any other unknown runtime fails.
PLANNED_RUNTIMES: set[str] = set()


def test_every_required_profile_ships(registry):
    assert REQUIRED <= set(registry.ids())


def test_every_profile_names_known_recipes(registry, recipes):
    for profile in registry:
        unknown = [name for name in profile.recipes if name not in recipes]
        assert not unknown, f"{profile.id} names unknown recipes {unknown}"


def test_every_profile_runtime_has_an_exporter_or_is_planned(registry):
    runtimes = set(available_runtimes())
    for profile in registry:
        assert profile.runtime in runtimes | PLANNED_RUNTIMES, f"{profile.id}: no exporter for {profile.runtime}"


def test_every_profile_has_a_cpu_fallback_and_sourced_op_tables(registry):
    for profile in registry:
        assert any(a.all_ops for a in profile.accelerators.values()), profile.id
        for name, acc in profile.accelerators.items():
            if not acc.all_ops:
                assert acc.source in profile.sources, f"{profile.id}.{name}: op table without a named source"


def _write_profiles(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / "profiles"
    directory.mkdir()
    (directory / "dev-board.toml").write_text(text)
    return directory


GOOD = """
id = "dev-board"
name = "Dev board"
family = "test"
runtime = "onnxruntime"
format = "onnx"
memory_mb = 1024
recipes = ["fp32"]
[accelerators.cpu]
kind = "cpu"
precisions = ["fp32"]
op_vocabulary = "onnx"
all_ops = true
"""


def test_a_minimal_profile_loads(tmp_path):
    registry = load_registry(_write_profiles(tmp_path, GOOD))
    assert registry.get("dev-board").accelerators["cpu"].all_ops


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (("memory_mb = 1024", 'memory_mb = "lots"'), "dev-board.toml: memory_mb:"),
        (('precisions = ["fp32"]', 'precisions = ["fp64"]'), "dev-board.toml: accelerators.cpu.precisions.0:"),
        (('format = "onnx"', 'format = "onnx"\nflavour = "x"'), "dev-board.toml: flavour: unknown key"),
        (('recipes = ["fp32"]', "recipes = []"), "dev-board.toml: recipes:"),
        (("all_ops = true", "all_ops = false"), "dev-board.toml: accelerators.cpu:"),
        (('id = "dev-board"', 'id = "other"'), "dev-board.toml: id:"),
        (("all_ops = true", 'all_ops = true\n[toolchain]\nort = "lots"'), "dev-board.toml: toolchain:"),
        (("[accelerators.cpu]", "[accelerators.cpu\n"), "dev-board.toml: invalid TOML"),
        (('op_vocabulary = "onnx"', 'op_vocabulary = "klingon"'),
         "dev-board.toml: accelerators.cpu.op_vocabulary: unknown op vocabulary 'klingon'"),
    ],
)
def test_broken_profile_names_file_and_field(tmp_path, patch, expected):
    directory = _write_profiles(tmp_path, GOOD.replace(*patch))
    with pytest.raises(ProfileError) as info:
        load_registry(directory)
    assert expected in str(info.value)


def test_extends_merges_parent_facts(tmp_path):
    directory = _write_profiles(tmp_path, GOOD)
    (directory / "dev-board-lite.toml").write_text('id = "dev-board-lite"\nextends = "dev-board"\nname = "Lite"\nmemory_mb = 512\n')
    lite = load_registry(directory).get("dev-board-lite")
    assert (lite.name, lite.memory_mb, lite.runtime) == ("Lite", 512, "onnxruntime")


def test_unknown_target_suggests_close_ids(registry):
    with pytest.raises(UnknownTargetError) as info:
        registry.get("jetson-orn")
    assert "jetson-orin" in str(info.value)


def test_shipped_profiles_directory_is_the_default():
    assert PROFILES_DIR.name == "profiles" and any(PROFILES_DIR.glob("*.toml"))
