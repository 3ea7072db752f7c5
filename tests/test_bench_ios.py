"""ios runner: the result schema (ios_harness/result.schema.json), the parser against valid and invalid
documents made here, the xcodebuild/xcresulttool command builders, the attachment manifest, and the
Swift encoder's keys against the schema. Swift does not compile on this machine: the Swift package itself
is not built here (see ios_harness/README.md)."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.runners.base import RunnerError, runner_for_uri
from edgepack.device_bench.runners.ios import (
    ENERGY_REASON,
    HARNESS_DIR,
    IosRunner,
    XcodeCommands,
    compute_units_for,
    find_attachment,
    harness_config,
    load_schema,
    parse_document,
    validate_document,
)
from edgepack.device_bench.stats import summarize
from edgepack.errors import InputError, ProfileError, UnsupportedError
from edgepack.exporters.base import Artifact
from edgepack.targets.registry import load_registry

UDID = "00008130-001A2B3C4D5E001E"
URI = f"ios://{UDID}"


def _latencies(n: int, median: float, seed: int, slow_prefix: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    values = median * np.exp(rng.normal(0.0, 0.05, n))  # lognormal: median exactly `median` in the limit
    values[:slow_prefix] *= 3.0
    return [round(float(v), 5) for v in values]


def _plan(cpu_ops: int = 0) -> dict[str, Any]:
    ops = [{"operator": "ios17.conv", "preferred": "neuralEngine", "supported": ["cpu", "gpu", "neuralEngine"], "cost": 0.4}] * 3
    ops += [{"operator": "ios17.gather", "preferred": "cpu", "supported": ["cpu"], "cost": None}] * cpu_ops
    return {"available": True, "operations": ops}


def _run(units: str, median: float, *, seed: int = 0, n: int = 400, slow_prefix: int = 0, cpu_ops: int = 0) -> dict[str, Any]:
    return {
        "compute_units": units,
        "load_ms": 85.5,
        "first_inference_ms": 12.25,
        "warmup_iterations": 0,
        "latencies_ms": _latencies(n, median, seed, slow_prefix),
        "stop_reason": "reached",
        "memory": {"peak_phys_footprint_mb": 142.5, "method": "peak task_vm_info.phys_footprint"},
        "thermal_state_start": "nominal",
        "thermal_state_end": "fair",
        "compute_plan": _plan(cpu_ops),
    }


def _document(**overrides: Any) -> dict[str, Any]:
    document = {
        "schema_version": 1,
        "harness": {"name": "edgepack-ios-bench", "version": "0.1.0"},
        "device": {
            "model_identifier": "iPhone16,1", "system_name": "iOS", "system_version": "17.5.1", "is_simulator": False,
            "processor_count": 6, "physical_memory_mb": 7681.0, "low_power_mode": False,
        },  # fmt: skip
        "model": {
            "file": "Model.mlpackage", "compile_ms": 640.0,
            "inputs": [{"name": "input", "kind": "multiArray", "shape": [1, 1, 8, 8], "data_type": "float32"}],
        },  # fmt: skip
        "config": {"warmup": "auto", "min_iters": 200, "min_seconds": 2.0, "max_iters": 100000, "timeout_s": 600.0,
                   "seed": 0, "compute_units": ["all", "cpuAndNeuralEngine", "cpuOnly"]},  # fmt: skip
        "runs": [
            _run("all", 1.0, seed=1, slow_prefix=30, cpu_ops=2),
            _run("cpuAndNeuralEngine", 1.2, seed=2),
            {"compute_units": "cpuOnly", "error": "Error Domain=com.apple.CoreML Code=0 \"failed to load\""},
        ],
    }
    document.update(overrides)
    return document


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    package = tmp_path / "artifacts" / "iphone-15-pro" / "model.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    return Artifact("iphone-15-pro", "coreml", package, (package / "Manifest.json",), "mlpackage", "fp16", "fp16", (), (), {}, "coremltools")


# --------------------------------------------------------------------------------------------------
# Schema and parser
# --------------------------------------------------------------------------------------------------


def test_schema_is_a_valid_json_schema() -> None:
    import jsonschema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"] == {"const": 1}
    validate_document(_document())


def test_parse_valid_document_auto_warmup(artifact: Artifact) -> None:
    document = _document()
    config = BenchConfig(warmup="auto", min_iters=200, min_seconds=2.0)
    result = parse_document(document, units="all", config=config, artifact=artifact, runner_uri=URI)
    samples = document["runs"][0]["latencies_ms"]
    assert result.warmup_mode == "auto" and 30 <= result.warmup_discarded <= 60
    kept = samples[result.warmup_discarded :]
    assert result.latencies_ms == tuple(round(v, 4) for v in kept)
    assert result.p50 == pytest.approx(float(np.quantile(kept, 0.5)))
    assert result.p99 == pytest.approx(float(np.quantile(kept, 0.99)))
    assert result.p50 == pytest.approx(1.0, rel=0.02) and result.ci95_p50[0] <= result.p50 <= result.ci95_p50[1]
    assert result.runner == URI and result.device == "iPhone16,1" and result.target == "iphone-15-pro"
    assert result.cold_start_ms == pytest.approx(85.5 + 12.25) and result.load_ms == 85.5
    assert result.peak_mem_mb == 142.5 and result.peak_mem_reason is None
    assert result.energy_mj_per_inference is None and result.energy_reason == ENERGY_REASON
    assert result.thermal == {"state_start": "nominal", "state_end": "fair"}
    env = result.env
    assert env["compute_units"] == "all" and env["compile_ms"] == 640.0
    assert env["compute_plan"]["preferred_device_counts"] == {"cpu": 2, "neuralEngine": 3}
    assert env["other_compute_units"]["cpuAndNeuralEngine"]["p50_ms"] == pytest.approx(1.2, rel=0.02)
    assert "failed to load" in env["other_compute_units"]["cpuOnly"]["error"]
    assert any("2 of 5 operations are planned on the CPU under all (ios17.gather)" in n for n in result.notes)
    assert BenchResult.from_json(result.to_json()) == result


def test_parse_fixed_warmup_and_other_units(artifact: Artifact) -> None:
    document = _document()
    document["runs"][1]["warmup_iterations"] = 10
    config = BenchConfig(warmup=10, min_iters=400, min_seconds=0.0, accelerator="ane")
    result = parse_document(document, units="cpuAndNeuralEngine", config=config, artifact=artifact, runner_uri=URI)
    assert result.warmup_mode == "fixed" and result.warmup_discarded == 10
    assert len(result.latencies_ms) == 400 and result.p50 == pytest.approx(summarize(document["runs"][1]["latencies_ms"]).p50)
    assert not any("planned on the CPU" in n for n in result.notes)
    with pytest.raises(RunnerError, match="could not run the model under cpuOnly: Error Domain"):
        parse_document(document, units="cpuOnly", config=config, artifact=artifact, runner_uri=URI)
    with pytest.raises(RunnerError, match="did not run compute units 'cpuAndGPU'"):
        parse_document(document, units="cpuAndGPU", config=config, artifact=artifact, runner_uri=URI)


def test_parse_simulator_and_missing_plan_and_memory(artifact: Artifact) -> None:
    document = _document()
    document["device"]["is_simulator"] = True
    document["runs"][0]["compute_plan"] = {"available": False, "reason": "MLComputePlan needs iOS 17.4"}
    document["runs"][0]["memory"] = {"reason": "task_info(TASK_VM_INFO) failed on this device"}
    document["runs"][0]["stop_reason"] = "timeout"
    result = parse_document(document, units="all", config=BenchConfig(), artifact=artifact, runner_uri=URI)
    assert result.peak_mem_mb is None and "task_info" in (result.peak_mem_reason or "")
    assert any("simulator" in n for n in result.notes) and any("no compute plan" in n for n in result.notes)
    assert any(n.startswith("stopped at timeout") for n in result.notes)


def _mutations() -> list[tuple[str, Any, str]]:
    """(description, mutate(document), expected path in the error)."""

    def set_path(path: tuple[Any, ...], value: Any) -> Any:
        def mutate(document: dict[str, Any]) -> None:
            target = document
            for key in path[:-1]:
                target = target[key]
            if value is KeyError:
                del target[path[-1]]
            else:
                target[path[-1]] = value

        return mutate

    return [
        ("newer schema", set_path(("schema_version",), 2), "schema_version"),
        ("no runs", set_path(("runs",), []), "runs"),
        ("runs missing", set_path(("runs",), KeyError), "(document)"),
        ("empty latencies", set_path(("runs", 0, "latencies_ms"), []), "runs/0"),
        ("negative latency", set_path(("runs", 0, "latencies_ms", 3), -1.0), "runs/0"),
        ("latency as text", set_path(("runs", 0, "latencies_ms", 0), "1.0"), "runs/0"),
        ("unknown compute units", set_path(("runs", 1, "compute_units"), "neuralEngineOnly"), "runs/1"),
        ("unknown key", set_path(("device", "colour"), "red"), "device"),
        ("memory with both", set_path(("runs", 0, "memory", "reason"), "x"), "runs/0"),
        ("thermal state", set_path(("runs", 0, "thermal_state_end"), "hot"), "runs/0"),
        ("plan without operations", set_path(("runs", 0, "compute_plan"), {"available": True}), "runs/0"),
        ("cost above 1", set_path(("runs", 0, "compute_plan", "operations", 0), {"operator": "x", "preferred": "cpu", "supported": [], "cost": 2}), "runs/0"),
        ("warmup word", set_path(("config", "warmup"), "never"), "config/warmup"),
        ("wrong harness", set_path(("harness", "name"), "other-bench"), "harness/name"),
    ]  # fmt: skip


@pytest.mark.parametrize(("what", "mutate", "where"), _mutations(), ids=[m[0] for m in _mutations()])
def test_invalid_documents_are_refused(artifact: Artifact, what: str, mutate: Any, where: str) -> None:
    document = copy.deepcopy(_document())
    mutate(document)
    with pytest.raises(RunnerError, match=f"does not follow result.schema.json: {re.escape(where)}"):
        parse_document(document, units="all", config=BenchConfig(), artifact=artifact, runner_uri=URI)


# --------------------------------------------------------------------------------------------------
# Compute units from the profile, harness config
# --------------------------------------------------------------------------------------------------


def test_every_apple_accelerator_has_compute_units() -> None:
    apple = [p for p in load_registry() if p.runtime == "coreml"]
    assert {p.id for p in apple} >= {"iphone-15-pro", "mac-apple-silicon"}
    for profile in apple:
        for name, acc in profile.accelerators.items():
            assert acc.coreml_compute_units is not None, f"{profile.id}: accelerator '{name}' has no Core ML compute-unit setting"


def test_compute_units_follow_the_profile() -> None:
    iphone = load_registry().get("iphone-15-pro")
    assert compute_units_for(iphone, None) == "all"
    assert compute_units_for(iphone, "all") == "all"
    assert compute_units_for(iphone, "ane") == "cpuAndNeuralEngine"
    assert compute_units_for(iphone, "cpu") == "cpuOnly"
    assert compute_units_for(iphone, "gpu") == "cpuAndGPU"
    with pytest.raises(InputError, match="not one of iphone-15-pro's accelerators"):
        compute_units_for(iphone, "htp")


NEW_APPLE_DEVICE = '''
id = "acme-tablet"
extends = "iphone-15-pro"
name = "Acme tablet"

[accelerators.ane]
coreml_compute_units = "cpuAndGPU"

[accelerators.npu2]
kind = "npu"
precisions = ["fp16"]
op_vocabulary = "mil"
all_ops = true
coreml_compute_units = "cpuAndNeuralEngine"

[accelerators.dsp]
kind = "dsp"
precisions = ["fp16"]
op_vocabulary = "mil"
all_ops = true
'''


def test_a_new_apple_accelerator_is_one_toml(tmp_path: Path) -> None:
    (tmp_path / "acme-tablet.toml").write_text(NEW_APPLE_DEVICE)
    registry = load_registry(extra=[tmp_path / "acme-tablet.toml"])
    tablet = registry.get("acme-tablet")
    assert compute_units_for(tablet, "npu2") == "cpuAndNeuralEngine"
    assert compute_units_for(tablet, "ane") == "cpuAndGPU"  # a child profile overrides one fact
    assert compute_units_for(tablet, "cpu") == "cpuOnly"  # the rest is inherited
    with pytest.raises(UnsupportedError, match=r"names no Core ML compute units \(\[accelerators\.dsp\] coreml_compute_units\)"):
        compute_units_for(tablet, "dsp")
    runner = runner_for_uri(URI, registry=registry)
    assert isinstance(runner, IosRunner) and runner.registry is registry and IosRunner.formats() == ("mlpackage",)
    (tmp_path / "acme-tablet.toml").write_text(NEW_APPLE_DEVICE.replace('"cpuAndNeuralEngine"', '"neuralEngineOnly"'))
    with pytest.raises(ProfileError, match=r"acme-tablet\.toml: accelerators\.npu2\.coreml_compute_units: "):
        load_registry(extra=[tmp_path / "acme-tablet.toml"])
    (tmp_path / "acme-tablet.toml").write_text(NEW_APPLE_DEVICE.replace("coreml_compute_units", "compute_units", 1))
    with pytest.raises(ProfileError, match=r"acme-tablet\.toml: accelerators\.ane\.compute_units: unknown key"):
        load_registry(extra=[tmp_path / "acme-tablet.toml"])
    with pytest.raises(TypeError, match="needs the target registry"):
        IosRunner.from_uri(URI, {})


def test_harness_config() -> None:
    auto = harness_config(BenchConfig(min_iters=100, min_seconds=1.0), "all")
    assert auto["min_iters"] == 200 and auto["warmup"] == "auto" and auto["compute_units"] == ["all", "cpuAndNeuralEngine", "cpuOnly"]
    fixed = harness_config(BenchConfig(warmup=5, min_iters=50, max_iters=60, seed=3), "cpuAndGPU")
    assert (fixed["min_iters"], fixed["max_iters"], fixed["warmup"], fixed["seed"]) == (50, 60, 5, 3)
    assert fixed["compute_units"][-1] == "cpuAndGPU"
    validate_document(_document(config=fixed))  # the harness echoes this config: the schema must accept it


# --------------------------------------------------------------------------------------------------
# Xcode commands, attachment manifest, runner
# --------------------------------------------------------------------------------------------------


def test_xcode_command_builders(tmp_path: Path) -> None:
    commands = XcodeCommands(UDID, team="ABCDE12345")
    derived, bundle = tmp_path / "dd", tmp_path / "r.xcresult"
    assert commands.build_for_testing(derived) == [
        "xcodebuild", "build-for-testing", "-scheme", "EdgepackBench", "-destination", f"id={UDID}",
        "-derivedDataPath", str(derived), "-allowProvisioningUpdates", "DEVELOPMENT_TEAM=ABCDE12345",
    ]  # fmt: skip
    assert commands.test_without_building(derived, bundle) == [
        "xcodebuild", "test-without-building", "-scheme", "EdgepackBench", "-destination", f"id={UDID}",
        "-derivedDataPath", str(derived), "-resultBundlePath", str(bundle),
        "-only-testing:EdgepackBenchTests/BenchTests/testBenchmark",
    ]  # fmt: skip
    assert commands.export_attachments(bundle, tmp_path / "a") == [
        "xcrun", "xcresulttool", "export", "attachments", "--path", str(bundle), "--output-path", str(tmp_path / "a"),
    ]  # fmt: skip
    assert "-allowProvisioningUpdates" not in XcodeCommands("A1B2C3D4-1111-2222-3333-444455556666").build_for_testing(derived)
    for udid, team in (("not a udid", None), ("id=x", None), ("-abc12345", None), (UDID, "abc"), (UDID + "\n", None)):
        with pytest.raises(InputError):
            XcodeCommands(udid, team)


def test_find_attachment_through_the_manifest(tmp_path: Path) -> None:
    export = tmp_path / "attachments"
    export.mkdir()
    (export / "5D1C.json").write_text(json.dumps(_document()))
    (export / "9AF0.png").write_bytes(b"\x89PNG")
    manifest = [
        {"testIdentifier": "EdgepackBenchTests/BenchTests/testMemoryMetric()", "attachments": []},
        {
            "testIdentifier": "EdgepackBenchTests/BenchTests/testBenchmark()",
            "attachments": [
                {"exportedFileName": "9AF0.png", "suggestedHumanReadableName": "Screenshot_0_1A2B.png"},
                {"exportedFileName": "5D1C.json", "isAssociatedWithFailure": False,
                 "suggestedHumanReadableName": "edgepack-bench-result_0_6E1D3C4A-52B3-4B8E-9A57-0C8D2D7F6B11.json"},
            ],
        },
    ]  # fmt: skip
    (export / "manifest.json").write_text(json.dumps(manifest))
    assert find_attachment(export) == (export / "5D1C.json").resolve()
    manifest[1]["attachments"][1]["exportedFileName"] = "../../etc/passwd"
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunnerError, match="is missing"):
        find_attachment(export)
    (export / "manifest.json").write_text(json.dumps(manifest[:1]))
    with pytest.raises(RunnerError, match="skipped or failed before attaching"):
        find_attachment(export)
    (export / "manifest.json").unlink()
    with pytest.raises(RunnerError, match="cannot read the attachment manifest"):
        find_attachment(export)


def test_runner_uri_and_not_measurable_here(artifact: Artifact) -> None:
    runner = runner_for_uri(f"{URI}?team=ABCDE12345")
    assert isinstance(runner, IosRunner) and runner.uri == URI and runner.commands.team == "ABCDE12345"
    for bad in ("ios://", "ios://zz", f"{URI}?colour=red", f"{URI}?team=x"):
        with pytest.raises(InputError):
            runner_for_uri(bad)
    with pytest.raises(UnsupportedError, match="not onnx"):
        runner.run(Artifact("iphone-15-pro", "coreml", artifact.path, (), "onnx", "fp16", "", (), (), {}, ""), BenchConfig())
    if shutil.which("xcrun") is None:
        with pytest.raises(RunnerError, match="not measurable here: needs macOS with Xcode"):
            runner.run(artifact, BenchConfig())


# --------------------------------------------------------------------------------------------------
# The Swift encoder follows the schema
# --------------------------------------------------------------------------------------------------


def _swift_keys(path: Path) -> set[str]:
    """Raw values of the CodingKeys cases (``case x = "snake"`` and bare ``case a, b``)."""
    keys: set[str] = set()
    for block in re.findall(r"enum CodingKeys: String, CodingKey \{(.*?)\n    \}", path.read_text(), re.S):
        for line in block.splitlines():
            line = line.strip()
            if not line.startswith("case "):
                continue
            for item in line[5:].split(","):
                name, _, raw = item.partition("=")
                keys.add(raw.strip().strip('"') if raw else name.strip())
    return keys


def _schema_keys(node: Any) -> set[str]:
    keys: set[str] = set()
    if isinstance(node, dict):
        keys |= set(node.get("properties", {}))
        for value in node.values():
            keys |= _schema_keys(value)
    elif isinstance(node, list):
        for value in node:
            keys |= _schema_keys(value)
    return keys


def test_swift_coding_keys_are_schema_keys() -> None:
    sources = HARNESS_DIR / "Sources" / "EdgepackBench"
    document_keys = _swift_keys(sources / "ResultDocument.swift")
    config_keys = _swift_keys(sources / "BenchConfig.swift")
    assert len(document_keys) > 25
    assert document_keys <= _schema_keys(load_schema()), document_keys - _schema_keys(load_schema())
    assert config_keys == set(harness_config(BenchConfig(), "all")) == set(load_schema()["properties"]["config"]["properties"])
