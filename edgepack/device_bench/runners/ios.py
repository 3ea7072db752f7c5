"""The ``ios://UDID`` runner: Core ML ``.mlpackage`` artifacts on an iPhone/iPad (or simulator) through
``ios_harness``, a Swift package with an XCTest bench.

Per artifact: copy ``ios_harness`` to a temp dir and stage ``Model.mlpackage`` + ``bench-config.json`` in
its test resources -> ``xcodebuild build-for-testing`` -> ``xcodebuild test-without-building
-destination id=UDID -resultBundlePath R.xcresult`` -> ``xcrun xcresulttool export attachments`` -> read
the ``edgepack-bench-result*.json`` attachment named in the export's ``manifest.json`` -> validate it
against ``ios_harness/result.schema.json`` -> :func:`parse_document` -> :class:`BenchResult`.

The harness measures every compute-unit setting in one test run (``all``, ``cpuAndNeuralEngine``,
``cpuOnly``, plus ``cpuAndGPU`` when asked); the result is the one ``BenchConfig.accelerator`` names (default
``all``; an accelerator id maps to the ``coreml_compute_units`` of its ``[accelerators.<id>]`` in the target
profile, looked up in the registry the runner is given), the others are summarised in
``env["other_compute_units"]``.
Statistics are computed here from the per-iteration latencies (:mod:`edgepack.device_bench.stats`).

Xcode exists on macOS only: elsewhere :meth:`IosRunner.run` raises :class:`RunnerError` ("not measurable
here") and nothing is estimated. Options: ``team`` (``DEVELOPMENT_TEAM`` for signing on a device),
``harness`` (local ``ios_harness`` folder).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.runners.base import Runner, RunnerError, split_uri
from edgepack.device_bench.stats import detect_warmup, summarize
from edgepack.errors import InputError, UnsupportedError
from edgepack.exporters.base import Artifact
from edgepack.models.source import TensorSpec
from edgepack.targets.registry import Registry
from edgepack.targets.schema import TargetProfile

HARNESS_DIR = Path(__file__).resolve().parents[3] / "ios_harness"
"""``ios_harness/`` of a source checkout (override with the ``harness`` option)."""
SCHEMA_FILE = "result.schema.json"
SCHEME = "EdgepackBench"
TEST_ID = "EdgepackBenchTests/BenchTests/testBenchmark"
RESOURCES = Path("Tests") / "EdgepackBenchTests" / "Resources"
ATTACHMENT_PREFIX = "edgepack-bench-result"
STAGED_MODEL = "Model.mlpackage"
STAGED_CONFIG = "bench-config.json"
BUILD_TIMEOUT_S = 1800.0
STEP_TIMEOUT_S = 300.0
TEST_GRACE_S = 300.0
"""Added per compute-unit setting to ``timeout_s`` (install, compile, load, compute plan)."""
NOT_MEASURABLE = "not measurable here: needs macOS with Xcode (xcrun and xcodebuild)"
ENERGY_REASON = (
    "iOS gives tests no energy counter; measure with Instruments' Power Profiler (Xcode) on the device"
)

DEFAULT_ACCELERATOR = "all"
"""``BenchConfig.accelerator`` that lets Core ML choose (``MLComputeUnits.all``); any other value is an
accelerator id of the profile."""
DEFAULT_COMPUTE_UNITS = ("all", "cpuAndNeuralEngine", "cpuOnly")

_UDID = re.compile(r"[0-9A-Fa-f][0-9A-Fa-f-]{7,63}")
_TEAM = re.compile(r"[A-Z0-9]{10}")


# --------------------------------------------------------------------------------------------------
# The result document
# --------------------------------------------------------------------------------------------------


def schema_path(harness: Path = HARNESS_DIR) -> Path:
    return harness / SCHEMA_FILE


@cache
def load_schema(path: Path | None = None) -> dict[str, Any]:
    """The JSON Schema of the harness's result document (``ios_harness/result.schema.json``)."""
    path = path or schema_path()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnsupportedError(f"{path}: the iOS result schema is missing ({exc.strerror})") from None


def validate_document(document: Any, schema: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`RunnerError` naming the first problem when ``document`` does not follow the schema."""
    try:
        import jsonschema
    except ImportError:
        raise UnsupportedError("validating the iOS result needs jsonschema", hint="pip install jsonschema") from None
    validator = jsonschema.Draft202012Validator(dict(schema or load_schema()))
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(document)"
        raise RunnerError(f"iOS bench result does not follow {SCHEMA_FILE}: {where}: {error.message[:300]}")


def compute_units_for(profile: TargetProfile, accelerator: str | None) -> str:
    """MLComputeUnits name for ``accelerator``: ``all``, or the ``coreml_compute_units`` of one of
    ``profile``'s accelerators."""
    name = accelerator or DEFAULT_ACCELERATOR
    if name == DEFAULT_ACCELERATOR:
        return "all"
    acc = profile.accelerators.get(name)
    if acc is None:
        known = ", ".join([DEFAULT_ACCELERATOR, *sorted(profile.accelerators)])
        raise InputError(
            f"accelerator '{name}' is not one of {profile.id}'s accelerators", hint=f"choose one of: {known}"
        )
    if acc.coreml_compute_units is None:
        raise UnsupportedError(
            f"accelerator '{name}' of {profile.id}: its profile names no Core ML compute units "
            f"([accelerators.{name}] coreml_compute_units)"
        )
    return acc.coreml_compute_units


def harness_config(config: BenchConfig, units: str) -> dict[str, Any]:
    """``bench-config.json`` for the harness. With ``warmup="auto"`` the harness measures from the first
    iteration and runs twice ``min_iters`` (detection discards at most half), so at least ``min_iters`` stay."""
    auto = config.warmup == "auto"
    wanted = [*DEFAULT_COMPUTE_UNITS, *([units] if units not in DEFAULT_COMPUTE_UNITS else [])]
    min_iters = config.min_iters * 2 if auto else config.min_iters
    return {
        "warmup": config.warmup,
        "min_iters": min_iters,
        "min_seconds": config.min_seconds,
        "max_iters": max(config.max_iters, min_iters),
        "timeout_s": config.timeout_s,
        "seed": config.seed,
        "compute_units": wanted,
    }


def _plan_summary(plan: Mapping[str, Any]) -> dict[str, Any]:
    if not plan.get("available"):
        return {"available": False, "reason": plan.get("reason")}
    operations = plan["operations"]
    by_device: dict[str, Counter[str]] = {}
    for op in operations:
        by_device.setdefault(op["preferred"], Counter())[op["operator"]] += 1
    return {
        "available": True,
        "operations": len(operations),
        "preferred_device_counts": {d: sum(c.values()) for d, c in sorted(by_device.items())},
        "operators_by_device": {d: dict(sorted(c.items())) for d, c in sorted(by_device.items())},
    }


def _fallback_notes(units: str, plan: Mapping[str, Any]) -> list[str]:
    summary = _plan_summary(plan)
    if not summary["available"]:
        return [f"no compute plan: {summary['reason']}"]
    counts = summary["preferred_device_counts"]
    total = summary["operations"]
    on_cpu = counts.get("cpu", 0)
    if units in ("all", "cpuAndNeuralEngine") and on_cpu:
        ops = ", ".join(sorted(summary["operators_by_device"].get("cpu", {})))
        return [f"{on_cpu} of {total} operations are planned on the CPU under {units} ({ops})"]
    return []


def _other_runs(runs: Sequence[Mapping[str, Any]], chosen: str) -> dict[str, Any]:
    others: dict[str, Any] = {}
    for run in runs:
        if run["compute_units"] == chosen:
            continue
        if "error" in run:
            others[run["compute_units"]] = {"error": run["error"]}
        else:
            stats = summarize(run["latencies_ms"])
            others[run["compute_units"]] = {"p50_ms": stats.p50, "n": stats.n}
    return others


def parse_document(
    document: Mapping[str, Any], *, units: str, config: BenchConfig, artifact: Artifact, runner_uri: str
) -> BenchResult:
    """Validate ``document`` and turn the run under ``units`` into a :class:`BenchResult`."""
    validate_document(document)
    runs = document["runs"]
    run = next((r for r in runs if r["compute_units"] == units), None)
    if run is None:
        measured = ", ".join(r["compute_units"] for r in runs)
        raise RunnerError(f"{runner_uri}: the harness did not run compute units '{units}' (it ran: {measured})")
    if "error" in run:
        raise RunnerError(f"{runner_uri}: Core ML could not run the model under {units}: {run['error'][:300]}")
    samples = run["latencies_ms"]
    discarded = detect_warmup(samples).discarded if config.warmup == "auto" else 0
    kept = samples[discarded:]
    stats = summarize(kept)
    device = document["device"]
    memory = run["memory"]
    notes = ["latencies: ContinuousClock around each synchronous MLModel.prediction(from:) on the device"]
    notes += _fallback_notes(units, run["compute_plan"])
    if run["stop_reason"] != "reached":
        notes.append(f"stopped at {run['stop_reason']} after {len(samples)} iterations ({len(kept)} kept)")
    if len(kept) < config.min_iters:
        notes.append(f"only {len(kept)} iterations kept after the warm-up (min_iters {config.min_iters})")
    if device["is_simulator"]:
        notes.append("ran on a simulator: the host Mac's CPU/GPU, no Neural Engine; not a device measurement")
    if memory.get("method"):
        notes.append(f"peak_mem_mb: {memory['method']}")
    env: dict[str, Any] = {
        "runtime": artifact.runtime,
        "tool": f"{document['harness']['name']} {document['harness']['version']}",
        "compute_units": units,
        "device": dict(device),
        "model": dict(document["model"]),
        "compile_ms": document["model"]["compile_ms"],
        "compute_plan": _plan_summary(run["compute_plan"]),
        "other_compute_units": _other_runs(runs, units),
        "threads": None,
        "threads_reason": "Core ML chooses its own threads",
        "low_power_mode": device["low_power_mode"],
    }
    return BenchResult(
        runner=runner_uri,
        device=device["model_identifier"],
        target=artifact.target_id,
        runtime=artifact.runtime,
        precision=artifact.precision,
        latencies_ms=tuple(round(float(v), 4) for v in kept),
        **stats.result_fields(),
        warmup_mode="auto" if config.warmup == "auto" else "fixed",
        warmup_discarded=discarded if config.warmup == "auto" else int(run["warmup_iterations"]),
        cold_start_ms=float(run["load_ms"]) + float(run["first_inference_ms"]),
        cold_start_reason=None,
        load_ms=float(run["load_ms"]),
        first_inference_ms=float(run["first_inference_ms"]),
        peak_mem_mb=memory.get("peak_phys_footprint_mb"),
        peak_mem_reason=memory.get("reason"),
        energy_mj_per_inference=None,
        energy_reason=ENERGY_REASON,
        thermal={"state_start": run["thermal_state_start"], "state_end": run["thermal_state_end"]},
        thermal_reason=None,
        sustained=None,
        sustained_reason="not supported by the iOS harness yet",
        env=env,
        config=config.to_dict(),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------------
# xcodebuild / xcresulttool commands
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class XcodeCommands:
    """Argument lists of the three Xcode steps (run with ``cwd`` = the staged package)."""

    udid: str
    team: str | None = None

    def __post_init__(self) -> None:
        if not _UDID.fullmatch(self.udid):
            raise InputError(f"iOS UDID '{self.udid}': expected hex digits and dashes ('xcrun xctrace list devices')")
        if self.team is not None and not _TEAM.fullmatch(self.team):
            raise InputError(f"team '{self.team}': expected a 10-character Apple developer team id")

    def _common(self, derived: Path) -> list[str]:
        return ["-scheme", SCHEME, "-destination", f"id={self.udid}", "-derivedDataPath", str(derived)]

    def build_for_testing(self, derived: Path) -> list[str]:
        signing = ["-allowProvisioningUpdates", f"DEVELOPMENT_TEAM={self.team}"] if self.team else []
        return ["xcodebuild", "build-for-testing", *self._common(derived), *signing]

    def test_without_building(self, derived: Path, result_bundle: Path) -> list[str]:
        return [
            "xcodebuild", "test-without-building", *self._common(derived),
            "-resultBundlePath", str(result_bundle), f"-only-testing:{TEST_ID}",
        ]  # fmt: skip

    def export_attachments(self, result_bundle: Path, out: Path) -> list[str]:
        return [
            "xcrun", "xcresulttool", "export", "attachments", "--path", str(result_bundle), "--output-path", str(out),
        ]  # fmt: skip


def find_attachment(export_dir: Path) -> Path:
    """The result JSON among the attachments ``xcresulttool export attachments`` wrote (via manifest.json)."""
    manifest_path = export_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunnerError(f"{manifest_path}: cannot read the attachment manifest: {exc}") from None
    tests = manifest if isinstance(manifest, list) else []
    for test in tests:
        for attachment in test.get("attachments", []) if isinstance(test, dict) else []:
            name = str(attachment.get("suggestedHumanReadableName") or "")
            exported = attachment.get("exportedFileName")
            if name.startswith(ATTACHMENT_PREFIX) and exported:
                path = (export_dir / str(exported)).resolve()
                if not path.is_relative_to(export_dir.resolve()) or not path.is_file():
                    raise RunnerError(f"{manifest_path}: attachment file '{exported}' is missing")
                return path
    raise RunnerError(
        f"{manifest_path}: no '{ATTACHMENT_PREFIX}' attachment: the bench test was skipped or failed before attaching"
    )


def read_attachment(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunnerError(f"{path}: the bench result is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RunnerError(f"{path}: the bench result is not a JSON object")
    return document


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


def _stage(harness: Path, artifact: Artifact, harness_settings: Mapping[str, Any], stage: Path) -> None:
    shutil.copytree(harness, stage, ignore=shutil.ignore_patterns(".build", "*.xcresult", ".swiftpm"))
    resources = stage / RESOURCES
    resources.mkdir(parents=True, exist_ok=True)
    if artifact.path.is_dir():
        shutil.copytree(artifact.path, resources / STAGED_MODEL)
    else:
        raise UnsupportedError(f"{artifact.target_id}: {artifact.path} is not an .mlpackage directory")
    (resources / STAGED_CONFIG).write_text(json.dumps(harness_settings, indent=2), encoding="utf-8")


class IosRunner(Runner):
    """Benchmarks ``.mlpackage`` artifacts on an Apple device through ``ios_harness`` (macOS + Xcode)."""

    feeds_input_specs = False  # the device tool feeds the artifact's own input shapes
    uses_profiles = True

    scheme = "ios"
    vendor_tool = True
    option_names = ("team", "harness")

    def __init__(self, commands: XcodeCommands, *, registry: Registry, harness: Path = HARNESS_DIR) -> None:
        self.commands = commands
        self.registry = registry
        self.harness = harness

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, str], *, registry: Registry | None = None) -> "IosRunner":
        if registry is None:
            raise TypeError("IosRunner.from_uri needs the target registry (runner_for_uri passes it)")
        scheme, udid, _ = split_uri(uri)
        if scheme != "ios" or not udid:
            raise InputError(f"runner '{uri}': expected ios://UDID (from 'xcrun xctrace list devices')")
        harness = Path(options["harness"]).expanduser() if "harness" in options else HARNESS_DIR
        return cls(XcodeCommands(udid.rstrip("/"), options.get("team")), registry=registry, harness=harness)

    @property
    def uri(self) -> str:
        return f"ios://{self.commands.udid}"

    def _call(self, argv: Sequence[str], what: str, timeout: float, cwd: Path) -> None:
        try:
            done = subprocess.run(
                list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise RunnerError(f"{self.uri}: {what} timed out after {timeout:g} s") from None
        if done.returncode != 0:
            lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower()] or lines
            raise RunnerError(f"{self.uri}: {what} failed: {errors[-1][:300] if errors else f'exit {done.returncode}'}")

    def run(
        self, artifact: Artifact, config: BenchConfig, *, inputs: Sequence[TensorSpec] | None = None
    ) -> BenchResult:
        self.check_format(artifact)
        units = compute_units_for(self.registry.get(artifact.target_id), config.accelerator)
        missing = [tool for tool in ("xcrun", "xcodebuild") if shutil.which(tool) is None]
        if missing:
            raise RunnerError(f"{self.uri}: {NOT_MEASURABLE}; {' and '.join(missing)} not found")
        settings = harness_config(config, units)
        with tempfile.TemporaryDirectory(prefix="edgepack-ios-") as local:
            root = Path(local)
            stage, derived = root / "harness", root / "derived"
            bundle, export = root / "bench.xcresult", root / "attachments"
            _stage(self.harness, artifact, settings, stage)
            self._call(self.commands.build_for_testing(derived), "xcodebuild build-for-testing", BUILD_TIMEOUT_S, stage)
            test_timeout = len(settings["compute_units"]) * (config.timeout_s + TEST_GRACE_S)
            testing = self.commands.test_without_building(derived, bundle)
            self._call(testing, "xcodebuild test-without-building", test_timeout, stage)
            export.mkdir()
            self._call(self.commands.export_attachments(bundle, export), "xcresulttool export", STEP_TIMEOUT_S, stage)
            document = read_attachment(find_attachment(export))
        return parse_document(document, units=units, config=config, artifact=artifact, runner_uri=self.uri)

