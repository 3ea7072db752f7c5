"""The ``adb://SERIAL`` runner: Android phones through TFLite's ``benchmark_model``.

Per artifact: ``mktemp -d`` under ``/data/local/tmp`` -> ``adb push`` the ``.tflite`` and
``android_harness/device/run_benchmark.sh`` -> ``adb shell sh run_benchmark.sh ... -- BENCHMARK_FLAGS``
(benchmark_model with the delegate flags of the chosen accelerator, battery and thermal sampling around it)
-> ``adb pull`` the one result file -> parse -> ``rm -rf`` the remote dir, also when a step failed.

* :class:`AdbTransport` only builds argument lists (``adb -s SERIAL push|pull|shell``); the one remote
  command line of ``adb shell`` is joined from :func:`shlex.quote`-d words.
* The delegate comes from the target profile (looked up in the registry the runner is given): the
  accelerator named by ``BenchConfig.accelerator`` (default ``cpu``) must be one of the profile's
  accelerators, and its ``[accelerators.<id>.litert_delegate]`` table holds the benchmark_model flags and
  the name benchmark_model reports it under. A new accelerator is a profile edit, not a code change.
* :func:`parse_harness_output` and :func:`parse_benchmark_output` read the result file;
  :func:`to_bench_result` turns them into a :class:`BenchResult`.

benchmark_model publishes summary statistics only (count, min, max, avg, std and, since the
``StatWithPercentiles`` change, p5/median/p95), never per-iteration samples. The result therefore has no
``latencies_ms``; p90, p99, their confidence intervals and the outlier count are ``None`` with
``percentiles_reason``. Energy is whole-device battery power during the timed phase minus an idle
baseline, times the mean latency; it is ``None`` with the reason while the phone is powered over USB.

Options (URI query or keyword options): ``adb`` (adb executable, default ``adb``), ``benchmark_model``
(path on the phone, default ``/data/local/tmp/benchmark_model``), ``remote_dir`` (default
``/data/local/tmp``), ``lib_dir`` (delegate libraries on the phone, default ``/data/local/tmp/qnn``),
``sysfs`` (default ``/sys``), ``idle_ms`` (idle baseline, default 5000), ``sample_ms`` (power sampling
period, default 100), ``harness`` (local ``android_harness`` folder).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.energy import EnergyReading
from edgepack.device_bench.runners.base import Runner, RunnerError, remote_cleanup_note, split_uri
from edgepack.errors import InputError, UnsupportedError
from edgepack.exporters.base import Artifact
from edgepack.models.source import TensorSpec
from edgepack.targets.registry import Registry
from edgepack.targets.schema import LiteRTDelegate, TargetProfile

HARNESS_DIR = Path(__file__).resolve().parents[3] / "android_harness"
"""``android_harness/`` of a source checkout (override with the ``harness`` option)."""
DEVICE_SCRIPT = "device/run_benchmark.sh"
RESULT_FORMAT = "edgepack-android-bench 1"
REMOTE_PREFIX = "edgepack-bench."
RESULT_FILE = "result.txt"
STEP_TIMEOUT_S = 300.0
RUN_GRACE_S = 60.0
"""Added to ``timeout_s`` plus the idle baseline for the ``adb shell`` run (delegate init, sampling)."""
PERCENTILES_REASON = (
    "benchmark_model publishes count/min/max/avg/std and p5/median/p95 only, no per-iteration samples: "
    "p90, p99, their confidence intervals and outliers cannot be computed"
)
ACCEPTED_BATTERY_STATUS = "Discharging"

_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_DEVICE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]*$")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STAT_PAIR = re.compile(rf"\b(count|first|curr|min|max|avg|std|p5|median|p95)=({_NUMBER})")
_RUNNING = re.compile(r"Running benchmark for at least (\d+) iterations")
_TIMINGS = re.compile(
    rf"Inference timings in us: Init: ({_NUMBER}), First inference: ({_NUMBER}), "
    rf"Warmup \(avg\): ({_NUMBER}), Inference \(avg\): ({_NUMBER})"
)
_MEMORY = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    rf"init=({_NUMBER}) overall=({_NUMBER})"
)
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUMBER})")
_APPLIED = re.compile(
    r"Explicitly applied (\S+) delegate, and the model graph will be (completely|partially) executed by the delegate"
    r"(?: w/ (\d+) delegate kernels)?"
)
_NOT_APPLIED = re.compile(
    r"Though (\S+) delegate is explicitly applied, the model graph will not be executed by the delegate"
)
_REMOTE_DIR = re.compile(rf"^/[A-Za-z0-9_./-]*/{re.escape(REMOTE_PREFIX)}[A-Za-z0-9]+$")


# --------------------------------------------------------------------------------------------------
# Delegates: the profile's [accelerators.<id>.litert_delegate] (data, not branches)
# --------------------------------------------------------------------------------------------------

DEFAULT_ACCELERATOR = "cpu"


def delegate_for(
    profile: TargetProfile, accelerator: str | None, lib_dir: str
) -> tuple[str, LiteRTDelegate, tuple[str, ...]]:
    """(accelerator id, delegate, flags) for ``accelerator`` (default ``cpu``) of ``profile``.

    Refuses an accelerator the profile does not declare, and one whose profile entry has no
    ``litert_delegate`` table.
    """
    name = accelerator or DEFAULT_ACCELERATOR
    acc = profile.accelerators.get(name)
    if acc is None:
        known = ", ".join(sorted(profile.accelerators))
        raise InputError(
            f"accelerator '{name}' is not one of {profile.id}'s accelerators", hint=f"choose one of: {known}"
        )
    delegate = acc.litert_delegate
    if delegate is None:
        known = ", ".join(sorted(n for n, a in profile.accelerators.items() if a.litert_delegate is not None))
        raise UnsupportedError(
            f"accelerator '{name}' of {profile.id}: its profile names no benchmark_model delegate "
            f"([accelerators.{name}.litert_delegate])",
            hint=f"with delegates: {known}" if known else "add benchmark_flags and reported_as to the profile",
        )
    return name, delegate, delegate.flags(lib_dir)


# --------------------------------------------------------------------------------------------------
# Transport: argument lists only
# --------------------------------------------------------------------------------------------------


def quote_command(argv: Sequence[str]) -> str:
    """One remote shell command line from ``argv``, every word :func:`shlex.quote`-d."""
    return " ".join(shlex.quote(str(word)) for word in argv)


@dataclass(frozen=True)
class AdbTransport:
    """Builds ``adb -s SERIAL ...`` argument lists and runs them (no local shell)."""

    serial: str
    adb: str = "adb"

    def __post_init__(self) -> None:
        if not _SERIAL.fullmatch(self.serial):
            raise InputError(
                f"adb serial '{self.serial}': expected letters, digits, '.', ':', '_' or '-' "
                "(as 'adb devices' lists it)"
            )

    def command(self, *args: str) -> list[str]:
        return [self.adb, "-s", self.serial, *args]

    def push(self, local: Path, remote: str) -> list[str]:
        return self.command("push", str(local), remote)

    def pull(self, remote: str, local: Path) -> list[str]:
        return self.command("pull", remote, str(local))

    def shell(self, argv: Sequence[str]) -> list[str]:
        return self.command("shell", quote_command(argv))

    def call(self, argv: Sequence[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv``; a missing adb, a missing or unauthorised device and a timeout raise."""
        if shutil.which(argv[0]) is None:
            raise UnsupportedError(
                f"'{argv[0]}' not found", hint="install Android SDK platform-tools, or pass ?adb=PATH"
            )
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RunnerError(f"adb://{self.serial}: {what} timed out after {timeout:g} s") from None
        text = f"{done.stderr}\n{done.stdout}"
        if "unauthorized" in text:
            raise RunnerError(
                f"adb://{self.serial}: device unauthorized", hint="accept the USB debugging prompt on the phone"
            )
        if re.search(r"device '?[^ ']*'? not found|no devices/emulators found|device offline", text):
            raise RunnerError(f"adb://{self.serial}: device not connected", hint="'adb devices' lists the serials")
        return done


# --------------------------------------------------------------------------------------------------
# Parsing the result file
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseStats:
    """One ``count=... first=... curr=... min=... max=... avg=... std=... p5=... median=... p95=...`` line
    (microseconds). A run whose samples were all equal prints ``count=N curr=X``: every statistic is X."""

    count: int
    first: float
    curr: float
    min: float
    max: float
    avg: float
    std: float
    p5: float | None
    median: float | None
    p95: float | None

    @classmethod
    def parse(cls, line: str) -> "PhaseStats | None":
        values = {k: float(v) for k, v in _STAT_PAIR.findall(line)}
        if "count" not in values or "curr" not in values:
            return None
        curr = values["curr"]
        same = "avg" not in values
        pick = (lambda name: curr) if same else (lambda name: values.get(name))  # noqa: E731
        return cls(
            count=int(values["count"]),
            first=values.get("first", curr),
            curr=curr,
            min=pick("min"),
            max=pick("max"),
            avg=pick("avg"),
            std=0.0 if same else values.get("std", 0.0),
            p5=pick("p5"),
            median=pick("median"),
            p95=pick("p95"),
        )


@dataclass(frozen=True)
class Delegation:
    """What benchmark_model said about one delegate: ``complete``, ``partial`` (with kernels) or ``none``."""

    delegate: str
    coverage: str
    kernels: int | None = None


@dataclass(frozen=True)
class BenchmarkModelReport:
    """What one benchmark_model run printed."""

    warmup: PhaseStats | None
    regular: PhaseStats
    regular_start: float | None
    """Uptime (s) when the timed phase began, from the harness's line stamps."""
    regular_end: float | None
    init_us: float | None
    first_inference_us: float | None
    inference_avg_us: float | None
    mem_init_mb: float | None
    mem_overall_mb: float | None
    peak_mem_mb: float | None
    delegations: tuple[Delegation, ...]


def parse_benchmark_output(lines: Sequence[tuple[float | None, str]]) -> BenchmarkModelReport:
    """Parse benchmark_model's log lines (each with its uptime stamp, or ``None``).

    The first ``Running benchmark for at least ...`` block is the warm-up, the second the timed run;
    each ends with its statistics line. Raises :class:`RunnerError` when there is no timed run.
    """
    phases: list[tuple[float | None, PhaseStats | None, float | None]] = []
    timings = memory = peak = None
    delegations: list[Delegation] = []
    for stamp, line in lines:
        if _RUNNING.search(line):
            phases.append((stamp, None, None))
            continue
        if phases and phases[-1][1] is None:
            stats = PhaseStats.parse(line)
            if stats is not None:
                phases[-1] = (phases[-1][0], stats, stamp)
                continue
        if (match := _TIMINGS.search(line)) is not None:
            timings = tuple(float(v) for v in match.groups())
        elif (match := _MEMORY.search(line)) is not None:
            memory = (float(match[1]), float(match[2]))
        elif (match := _PEAK.search(line)) is not None:
            peak = float(match[1])
        elif (match := _APPLIED.search(line)) is not None:
            delegations.append(Delegation(match[1], match[2].removesuffix("ly"), int(match[3]) if match[3] else None))
        elif (match := _NOT_APPLIED.search(line)) is not None:
            delegations.append(Delegation(match[1], "none"))
    done = [p for p in phases if p[1] is not None]
    if len(done) < 2:
        last = [line.strip() for _, line in lines if line.strip()][-3:]
        raise RunnerError(f"benchmark_model printed no timed-run statistics; last output: {' | '.join(last) or 'none'}")
    (_, warmup, _), (start, regular, end) = done[0], done[1]
    assert regular is not None
    return BenchmarkModelReport(
        warmup=warmup,
        regular=regular,
        regular_start=start,
        regular_end=end,
        init_us=timings[0] if timings else None,
        first_inference_us=timings[1] if timings else None,
        inference_avg_us=timings[3] if timings else None,
        mem_init_mb=memory[0] if memory else None,
        mem_overall_mb=memory[1] if memory else None,
        peak_mem_mb=peak,
        delegations=tuple(delegations),
    )


@dataclass
class HarnessRun:
    """The sections of the harness's result file."""

    props: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    battery_status: dict[str, str] = field(default_factory=dict)
    thermal: dict[str, dict[str, float]] = field(default_factory=lambda: {"start": {}, "end": {}})
    power: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"idle": [], "run": []})
    """Phase -> (uptime s, milliwatts) from ``|current_now| x voltage_now`` (uA x uV)."""
    marks: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    output: list[tuple[float | None, str]] = field(default_factory=list)
    complete: bool = False


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_harness_output(text: str) -> HarnessRun:
    """Parse the file ``run_benchmark.sh`` writes; refuses another format and a truncated file."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != RESULT_FORMAT:
        raise RunnerError(f"the harness result does not start with '{RESULT_FORMAT}' (wrong or old run_benchmark.sh?)")
    run = HarnessRun()
    for line in lines[1:]:
        kind, _, rest = line.partition(" ")
        if kind == "bm":
            stamp, _, message = rest.partition(" ")
            run.output.append((_float(stamp), message))
        elif kind == "power":
            words = rest.split()
            if len(words) == 4 and words[0] in run.power:
                t, current, voltage = (_float(w) for w in words[1:])
                if t is not None and current is not None and voltage is not None:
                    run.power[words[0]].append((t, abs(current) * voltage / 1e9))
        elif kind == "thermal":
            words = rest.split(" ", 3)
            if len(words) >= 3 and words[0] in run.thermal and (milli := _float(words[2])) is not None:
                label = f"{words[1]}:{words[3] if len(words) > 3 else 'unknown'}"
                run.thermal[words[0]][label] = milli / 1000.0
        elif kind in ("prop", "meta", "battery_status"):
            key, _, value = rest.partition(" ")
            target = {"prop": run.props, "meta": run.meta, "battery_status": run.battery_status}[kind]
            target[key] = value.strip()
        elif kind == "mark":
            key, _, value = rest.partition(" ")
            if (stamp := _float(value)) is not None:
                run.marks[key] = stamp
        elif kind == "exit":
            run.exit_code = int(rest) if rest.strip().lstrip("-").isdigit() else None
        elif kind == "end":
            run.complete = True
    if not run.complete:
        raise RunnerError("the harness result file is truncated (no 'end' line)")
    return run


# --------------------------------------------------------------------------------------------------
# Energy and thermal from the parsed sections
# --------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def battery_energy(run: HarnessRun, report: BenchmarkModelReport) -> EnergyReading:
    """mJ per inference: (mean power in the timed phase - idle baseline) x mean latency; or why not."""
    battery = run.meta.get("battery", "none")
    if battery == "none":
        return EnergyReading(None, reason="no battery with readable current_now and voltage_now under power_supply")
    status = {run.battery_status.get("start", "unknown"), run.battery_status.get("end", "unknown")}
    if status != {ACCEPTED_BATTERY_STATUS}:
        shown = "/".join(sorted(status))
        return EnergyReading(
            None,
            reason=f"battery status was {shown}, not {ACCEPTED_BATTERY_STATUS}: with USB power connected the battery "
            "current does not show the phone's load (use adb over Wi-Fi, 'adb tcpip', and unplug the cable)",
        )
    idle = [mw for _, mw in run.power["idle"]]
    if len(idle) < 2:
        return EnergyReading(
            None, reason=f"only {len(idle)} idle-baseline power sample(s); set idle_ms >= 2 x sample_ms"
        )
    if report.regular_start is None or report.regular_end is None or report.inference_avg_us is None:
        return EnergyReading(None, reason="benchmark_model's output has no timed phase boundaries or mean latency")
    # Strictly inside: uptime has 10 ms steps, so a sample stamped in a boundary step may predate it.
    window = [mw for t, mw in run.power["run"] if report.regular_start < t < report.regular_end]
    if len(window) < 2:
        seconds = report.regular_end - report.regular_start
        return EnergyReading(
            None,
            reason=f"only {len(window)} power sample(s) in the {seconds:.2f} s timed phase; "
            "raise min_seconds or lower sample_ms",
        )
    idle_mw, load_mw = _mean(idle), _mean(window)
    if load_mw <= idle_mw:
        return EnergyReading(
            None,
            reason=f"load power {load_mw:.0f} mW did not exceed the idle baseline {idle_mw:.0f} mW (noise; run longer)",
        )
    mj = (load_mw - idle_mw) * report.inference_avg_us / 1e6
    method = (
        f"battery {battery}: |current_now| x voltage_now (uA x uV), mean over the timed phase ({len(window)} samples, "
        f"{load_mw:.0f} mW) minus the idle baseline ({len(idle)} samples, {idle_mw:.0f} mW), x mean latency; "
        "whole device"
    )
    return EnergyReading(mj, method=method)


def thermal_summary(run: HarnessRun) -> tuple[dict[str, Any] | None, str | None]:
    """The host runner's thermal shape (``start_c``, ``end_c``, ``max_end_c``), or why there is none."""
    start, end = run.thermal["start"], run.thermal["end"]
    if not start or not end:
        return None, "no readable thermal_zone*/temp under the phone's class/thermal"
    return {"start_c": start, "end_c": end, "max_end_c": max(end.values())}, None


def _delegation_notes(accelerator: str, delegate: LiteRTDelegate, report: BenchmarkModelReport) -> list[str]:
    ours = [d for d in report.delegations if d.delegate.upper() == delegate.reported_as]
    if not ours:
        if accelerator == DEFAULT_ACCELERATOR:
            return []
        return [f"benchmark_model did not report applying the {delegate.reported_as} delegate: check its log"]
    worst = ours[-1]
    if worst.coverage == "none":
        return [f"the {delegate.reported_as} delegate ran no part of the graph: everything ran on the CPU"]
    if worst.coverage == "partial":
        return [
            f"the {delegate.reported_as} delegate ran part of the graph ({worst.kernels or '?'} delegate kernels); "
            "the rest fell back to the CPU"
        ]
    return []


def to_bench_result(
    run: HarnessRun,
    report: BenchmarkModelReport,
    *,
    runner_uri: str,
    artifact: Artifact,
    config: BenchConfig,
    accelerator: str,
    delegate: LiteRTDelegate,
    flags: Sequence[str],
) -> BenchResult:
    """The :class:`BenchResult` of one harness run (what benchmark_model did not publish is ``None``)."""
    regular = report.regular
    if regular.median is None or regular.p95 is None:
        raise RunnerError(
            "benchmark_model printed no median/p95 (an old build without StatWithPercentiles)",
            hint="use a current nightly benchmark_model (see android_harness/README.md)",
        )
    energy = battery_energy(run, report)
    thermal, thermal_reason = thermal_summary(run)
    device = run.props.get("ro.product.model") or runner_uri
    cold = (
        (report.init_us + report.first_inference_us) / 1000.0
        if report.init_us is not None and report.first_inference_us is not None
        else None
    )
    notes = [
        "latencies: benchmark_model's own timing of the timed phase (summary statistics only)",
        *_delegation_notes(accelerator, delegate, report),
    ]
    if config.warmup == "auto":
        notes.append("warmup 'auto': benchmark_model's time-based warm-up (>= 1 run and >= 0.5 s) was used")
    if regular.count > config.max_iters:
        notes.append(f"benchmark_model ran {regular.count} iterations; it has no max_iters bound")
    env: dict[str, Any] = {
        "runtime": artifact.runtime,
        "tool": "benchmark_model",
        "accelerator": accelerator,
        "delegate_flags": list(flags),
        "delegations": [d.__dict__ for d in report.delegations],
        "threads": config.threads,
        "device_props": dict(run.props),
        "battery_status": dict(run.battery_status),
        "memory_footprint_delta_mb": {"init": report.mem_init_mb, "overall": report.mem_overall_mb},
        "sample_ms": run.meta.get("sample_ms"),
        "idle_ms": run.meta.get("idle_ms"),
    }
    if config.threads is None:
        env["threads_reason"] = "benchmark_model chooses its own threads"
    return BenchResult(
        runner=runner_uri,
        device=device,
        target=artifact.target_id,
        runtime=artifact.runtime,
        precision=artifact.precision,
        latencies_ms=(),
        p50=regular.median / 1000.0,
        p90=None,
        p95=regular.p95 / 1000.0,
        p99=None,
        mean=regular.avg / 1000.0,
        std=regular.std / 1000.0,
        min=regular.min / 1000.0,
        max=regular.max / 1000.0,
        ci95_p50=None,
        ci95_p99=None,
        outliers=None,
        outlier_policy="not applied: no per-iteration samples",
        percentiles_reason=PERCENTILES_REASON,
        warmup_mode="fixed",
        warmup_discarded=report.warmup.count if report.warmup is not None else 0,
        cold_start_ms=cold,
        cold_start_reason=None if cold is not None else "benchmark_model printed no 'Inference timings in us' line",
        load_ms=report.init_us / 1000.0 if report.init_us is not None else None,
        first_inference_ms=report.first_inference_us / 1000.0 if report.first_inference_us is not None else None,
        peak_mem_mb=report.peak_mem_mb,
        peak_mem_reason=None
        if report.peak_mem_mb is not None
        else "benchmark_model printed no peak memory (--report_peak_memory_footprint needs a 2023+ build)",
        energy_mj_per_inference=energy.mj,
        energy_reason=energy.reason,
        energy_method=energy.method,
        thermal=thermal,
        thermal_reason=thermal_reason,
        sustained=None,
        sustained_reason="not supported by the adb runner: benchmark_model prints no per-iteration timing",
        env=env,
        config=config.to_dict(),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


def benchmark_flags(graph: str, config: BenchConfig, delegate_flags: Sequence[str]) -> list[str]:
    """benchmark_model flags for ``config``: runs, seconds, warm-up, threads, peak memory, delegate."""
    if config.warmup == "auto":
        warmup = ["--warmup_runs=1", "--warmup_min_secs=0.5"]
    else:
        warmup = [f"--warmup_runs={config.warmup}", "--warmup_min_secs=0"]
    flags = [
        f"--graph={graph}",
        f"--num_runs={config.min_iters}",
        f"--min_secs={config.min_seconds:g}",
        f"--max_secs={config.timeout_s:g}",
        *warmup,
        "--report_peak_memory_footprint=true",
    ]
    if config.threads is not None:
        flags.append(f"--num_threads={config.threads}")
    return [*flags, *delegate_flags]


def _device_path(uri: str, name: str, value: str) -> str:
    if not _DEVICE_PATH.fullmatch(value) or "/../" in f"{value}/":
        raise InputError(f"runner {uri}: {name} '{value}' must be an absolute path of letters, digits and _ . / + -")
    return value.rstrip("/") or "/"


def _whole(uri: str, name: str, value: str, lowest: int) -> int:
    if not value.isdigit() or int(value) < lowest:
        raise InputError(f"runner {uri}: {name} '{value}' must be a whole number >= {lowest}")
    return int(value)


class AdbRunner(Runner):
    """Benchmarks ``.tflite`` artifacts on an Android phone with benchmark_model; the delegate flags come from
    the artifact's target profile in ``registry``."""

    feeds_input_specs = False  # the device tool feeds the artifact's own input shapes
    uses_profiles = True

    scheme = "adb"
    vendor_tool = True
    option_names = ("adb", "benchmark_model", "remote_dir", "lib_dir", "sysfs", "idle_ms", "sample_ms", "harness")

    def __init__(
        self,
        transport: AdbTransport,
        *,
        registry: Registry,
        benchmark_model: str = "/data/local/tmp/benchmark_model",
        remote_dir: str = "/data/local/tmp",
        lib_dir: str = "/data/local/tmp/qnn",
        sysfs: str = "/sys",
        idle_ms: int = 5000,
        sample_ms: int = 100,
        harness: Path = HARNESS_DIR,
    ) -> None:
        self.transport = transport
        self.registry = registry
        self.benchmark_model = benchmark_model
        self.remote_dir = remote_dir
        self.lib_dir = lib_dir
        self.sysfs = sysfs
        self.idle_ms = idle_ms
        self.sample_ms = sample_ms
        self.script = harness / DEVICE_SCRIPT

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, str], *, registry: Registry | None = None) -> "AdbRunner":
        if registry is None:
            raise TypeError("AdbRunner.from_uri needs the target registry (runner_for_uri passes it)")
        scheme, serial, _ = split_uri(uri)
        if scheme != "adb" or not serial:
            raise InputError(f"runner '{uri}': expected adb://SERIAL (the serial 'adb devices' lists)")
        paths = {
            name: _device_path(uri, name, options[name])
            for name in ("benchmark_model", "remote_dir", "lib_dir", "sysfs")
            if name in options
        }
        numbers = {
            name: _whole(uri, name, options[name], low)
            for name, low in (("idle_ms", 0), ("sample_ms", 1))
            if name in options
        }
        harness = Path(options["harness"]).expanduser() if "harness" in options else HARNESS_DIR
        transport = AdbTransport(serial.rstrip("/"), options.get("adb", "adb"))
        return cls(transport, registry=registry, **paths, **numbers, harness=harness)

    @property
    def uri(self) -> str:
        return f"adb://{self.transport.serial}"

    def _shell(
        self, argv: Sequence[str], what: str, timeout: float = STEP_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return self.transport.call(self.transport.shell(argv), what, timeout)

    def _checked(
        self, argv: Sequence[str], what: str, timeout: float = STEP_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        done = self.transport.call(argv, what, timeout)
        if done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise RunnerError(f"{self.uri}: {what} failed: {detail[-1][:300] if detail else f'exit {done.returncode}'}")
        return done

    def _mktemp(self) -> str:
        done = self._shell(["mktemp", "-d", f"{self.remote_dir}/{REMOTE_PREFIX}XXXXXX"], "creating a remote temp dir")
        path = done.stdout.strip()
        if done.returncode != 0 or not _REMOTE_DIR.fullmatch(path):
            raise RunnerError(f"{self.uri}: mktemp -d failed: {(done.stderr.strip() or path)[:200]}")
        return path

    def _cleanup(self, remote: str) -> str:
        """Remove the remote temp dir; returns a note (never raises, so the run's own error wins)."""
        return remote_cleanup_note(remote, lambda: self._shell(["rm", "-rf", remote], "removing the remote temp dir"))

    def run(
        self, artifact: Artifact, config: BenchConfig, *, inputs: Sequence[TensorSpec] | None = None
    ) -> BenchResult:
        self.check_format(artifact)
        if not self.script.is_file():
            raise UnsupportedError(f"{self.script} not found", hint="pass ?harness=PATH/TO/android_harness")
        profile = self.registry.get(artifact.target_id)
        accelerator, delegate, flags = delegate_for(profile, config.accelerator, self.lib_dir)
        remote = self._mktemp()
        try:
            graph = f"{remote}/model.tflite"
            self._checked(self.transport.push(artifact.path, graph), "pushing the model")
            self._checked(self.transport.push(self.script, f"{remote}/run_benchmark.sh"), "pushing the harness")
            command = [
                "sh", f"{remote}/run_benchmark.sh",
                "--benchmark-model", self.benchmark_model,
                "--out", f"{remote}/{RESULT_FILE}",
                "--sysfs", self.sysfs,
                "--idle-ms", str(self.idle_ms),
                "--sample-ms", str(self.sample_ms),
                *(["--lib-dir", self.lib_dir] if delegate.needs_lib_dir else []),
                "--", *benchmark_flags(graph, config, flags),
            ]  # fmt: skip
            timeout = config.timeout_s + self.idle_ms / 1000.0 + RUN_GRACE_S
            done = self._shell(command, "the benchmark run", timeout)
            if done.returncode != 0:
                detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
                raise RunnerError(
                    f"{self.uri}: run_benchmark.sh exited with status {done.returncode}: "
                    f"{detail[-1][:300] if detail else 'no output'}"
                )
            with tempfile.TemporaryDirectory(prefix="edgepack-adb-") as local:
                target = Path(local) / RESULT_FILE
                self._checked(self.transport.pull(f"{remote}/{RESULT_FILE}", target), "pulling the result")
                text = target.read_text(encoding="utf-8", errors="replace")
        finally:
            note = self._cleanup(remote)
        run = parse_harness_output(text)
        if run.exit_code != 0:
            last = [line.strip() for _, line in run.output if line.strip()][-3:]
            raise RunnerError(
                f"{self.uri}: benchmark_model exited with status {run.exit_code}: {' | '.join(last) or 'no output'}",
                hint=f"is {self.benchmark_model} the benchmark_model for this phone's ABI? (android_harness/README.md)",
            )
        report = parse_benchmark_output(run.output)
        result = to_bench_result(
            run, report, runner_uri=self.uri, artifact=artifact, config=config, accelerator=accelerator,
            delegate=delegate, flags=flags,
        )  # fmt: skip
        return replace(result, notes=(*result.notes, note))
