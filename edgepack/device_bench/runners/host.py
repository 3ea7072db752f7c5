"""The ``host`` runner: runs an artifact in this process with its runtime's host predictor.

Sequence per artifact: import the runtime (not timed) -> load a fresh predictor and run one inference
(cold start) -> warm-up (fixed count, or detected afterwards with ``warmup="auto"``) -> timed loop until
both ``min_iters`` kept iterations and ``min_seconds`` are reached -> optional sustained phase.
Each iteration is timed on the runtime's own clock where the predictor exposes one
(:attr:`~edgepack.exporters.base.Predictor.runtime_clock`: OpenVINO's ``InferRequest.latency``, the number
``benchmark_app`` reports; ONNX Runtime's ``InferenceSession.run`` alone, which ``onnxruntime_perf_test``
times), with the wall-clock call of the predictor (edgepack's input/output handling included) kept beside
it as ``wall_p50_ms``; else on the wall.
Energy comes from :func:`edgepack.device_bench.energy.open_meter`; memory is the peak sampled RSS of
this process (psutil). The on-device agent (:mod:`edgepack.device_bench.agent`) uses this runner too.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.version import __version__
from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.energy import EnergyMeter, open_meter, read_thermal_zones
from edgepack.device_bench.runners.base import Runner, RunnerError
from edgepack.device_bench.stats import detect_warmup, summarize
from edgepack.errors import InputError, UnsupportedError
from edgepack.exporters.base import Arrays, Artifact, BenchAdapter, NotRunnable, Predictor
from edgepack.exporters.registry import capabilities, get_exporter
from edgepack.models.sample import example_inputs
from edgepack.models.source import ModelSource, TensorSpec
from edgepack.signals import raise_if_interrupted

HOST_ACCELERATORS = (None, "cpu")
POLL_SECONDS = 1.0
SUSTAINED_BINS = 200
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
MEMORY_NOTE = "peak_mem_mb: peak sampled RSS of the benchmarking process (interpreter and runtime libraries included)"


@dataclass(frozen=True)
class Loaded:
    predictor: Predictor
    threads: int | None
    load_ms: float


def _source_for(artifact: Artifact, inputs: Sequence[TensorSpec]) -> ModelSource:
    """A stand-in source for ``Exporter.predictor`` (only its I/O specs are known here)."""
    return ModelSource("onnx", str(artifact.path), artifact.target_id, "", list(inputs), list(artifact.outputs))


def _adapter(runtime: str) -> BenchAdapter | None:
    """The runtime's declared bench adapter (:attr:`~edgepack.exporters.base.Capabilities.bench`): runtimes with
    one get the bench's thread count; the others run through their exporter's ``predictor()``."""
    declared = capabilities(runtime)
    return declared.bench if declared is not None else None


def _load(artifact: Artifact, inputs: Sequence[TensorSpec], threads: int | None) -> Loaded:
    adapter = _adapter(artifact.runtime)
    if adapter is None:
        return _load_through_exporter(artifact, inputs, threads)
    try:
        import_module(adapter.module)
    except ImportError:
        raise UnsupportedError(
            f"{artifact.target_id}: runtime {artifact.runtime} is not installed here",
            hint=f"pip install {adapter.distribution}",
        ) from None
    started = time.perf_counter()
    predictor, used = adapter.build(artifact, threads)
    return Loaded(predictor, used, (time.perf_counter() - started) * 1000.0)


def _load_through_exporter(artifact: Artifact, inputs: Sequence[TensorSpec], threads: int | None) -> Loaded:
    if threads is not None:
        raise UnsupportedError(f"{artifact.target_id}: the bench cannot set threads for runtime {artifact.runtime}")
    exporter = get_exporter(artifact.runtime)
    started = time.perf_counter()
    predictor = exporter.predictor(artifact, _source_for(artifact, inputs))
    if isinstance(predictor, NotRunnable):
        raise UnsupportedError(f"{artifact.target_id}: cannot run on this host: {predictor.reason}")
    return Loaded(predictor, None, (time.perf_counter() - started) * 1000.0)


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def host_env(runtime: str, threads: int | None) -> dict[str, Any]:
    """Runtime and versions, threads, CPU, frequency governor and host name of this machine."""
    adapter = _adapter(runtime)
    versions = {"edgepack": __version__, "numpy": np.__version__}
    if adapter is not None:
        versions[adapter.distribution] = _version(adapter.distribution)
    env: dict[str, Any] = {
        "runtime": runtime,
        "versions": versions,
        "threads": threads,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    if threads is None:
        env["threads_reason"] = f"runtime {runtime} chooses its own threads"
    try:
        env["governor"] = GOVERNOR.read_text().strip()
    except OSError as exc:
        env["governor"] = None
        env["governor_reason"] = f"{GOVERNOR} not readable ({exc.strerror or exc})"
    return env


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------


@dataclass
class _PeakRss:
    """Largest RSS seen at the sampling points."""

    peak: int = 0
    error: str | None = None
    process: Any = None

    def sample(self) -> None:
        if self.error is not None:
            return
        try:
            if self.process is None:
                import psutil

                self.process = psutil.Process()
            self.peak = max(self.peak, int(self.process.memory_info().rss))
        except Exception as exc:  # noqa: BLE001 - psutil missing or the platform does not support it
            self.error = f"RSS not readable: {exc}"


@dataclass
class _Run:
    samples: list[float] = field(default_factory=list)
    """Per-iteration latency on the primary clock (the runtime's own where it has one, else the wall)."""
    wall: list[float] = field(default_factory=list)
    """The same iterations timed on the wall (kept only when the primary clock is the runtime's)."""
    discarded: int = 0
    notes: list[str] = field(default_factory=list)


def _infer(predictor: Predictor, feeds: Arrays, target: str) -> Arrays:
    try:
        return predictor(feeds)
    except Exception as exc:  # noqa: BLE001 - any runtime failure becomes one clear line
        raise_if_interrupted()  # a runtime may have rewrapped SIGINT/SIGTERM
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise RunnerError(f"{target}: inference failed: {message}") from None


def _measure(
    predictor: Predictor,
    feeds: Arrays,
    config: BenchConfig,
    target: str,
    meter: EnergyMeter,
    rss: _PeakRss,
    deadline: float,
) -> _Run:
    """Warm-up and the timed loop (see :class:`BenchConfig` for the stop rule)."""
    run = _Run()
    for _ in range(config.warmup if isinstance(config.warmup, int) else 0):
        _infer(predictor, feeds, target)
    auto = config.warmup == "auto"
    check_at = config.min_iters
    meter.start()
    started = last_poll = time.perf_counter()
    clocked = predictor.runtime_clock is not None
    while True:
        before = time.perf_counter()
        _infer(predictor, feeds, target)
        after = time.perf_counter()
        wall_ms = (after - before) * 1000.0
        run.samples.append(_latency_ms(predictor, target, wall_ms))
        if clocked:
            run.wall.append(wall_ms)
        if after - last_poll >= POLL_SECONDS:
            meter.poll()
            rss.sample()
            last_poll = after
        count = len(run.samples)
        if count >= check_at and after - started >= config.min_seconds:
            run.discarded = detect_warmup(run.samples).discarded if auto else 0
            if count - run.discarded >= config.min_iters:
                break
            check_at = count + max(10, config.min_iters - (count - run.discarded))
        if count >= config.max_iters or time.monotonic() > deadline:
            run.discarded = detect_warmup(run.samples).discarded if auto else 0
            why = f"max_iters {config.max_iters}" if count >= config.max_iters else f"timeout_s {config.timeout_s:g}"
            run.notes.append(f"stopped at {why} after {count} iterations ({count - run.discarded} kept)")
            break
    return run


def _latency_ms(predictor: Predictor, target: str, wall_ms: float) -> float:
    """One inference's latency on the primary clock: the runtime's own where it keeps one, else ``wall_ms``."""
    if predictor.runtime_clock is None:
        return wall_ms
    value = predictor.runtime_latency_ms()
    if value is None or not value >= 0.0:
        raise RunnerError(f"{target}: the runtime reported no latency for an inference ({predictor.runtime_clock})")
    return value


def _sustain(
    predictor: Predictor, feeds: Arrays, seconds: float, target: str, deadline: float
) -> list[tuple[float, float]]:
    """Run for ``seconds``; return (bin start s, median latency ms) over at most SUSTAINED_BINS time bins."""
    times: list[float] = []
    latencies: list[float] = []
    started = time.perf_counter()
    while True:
        before = time.perf_counter()
        _infer(predictor, feeds, target)
        after = time.perf_counter()
        times.append(before - started)
        latencies.append(_latency_ms(predictor, target, (after - before) * 1000.0))
        if after - started >= seconds or time.monotonic() > deadline:
            break
    width = max(seconds, times[-1]) / SUSTAINED_BINS
    bins = np.minimum((np.asarray(times) / width).astype(np.int64), SUSTAINED_BINS - 1)
    values = np.asarray(latencies)
    return [(round(float(b * width), 4), round(float(np.median(values[bins == b])), 4)) for b in np.unique(bins)]


def _thermal(start: dict[str, float] | str, end: dict[str, float] | str) -> tuple[dict[str, Any] | None, str | None]:
    if isinstance(start, str) or isinstance(end, str):
        return None, start if isinstance(start, str) else str(end)
    return {"start_c": start, "end_c": end, "max_end_c": max(end.values())}, None


class HostRunner(Runner):
    """Runs artifacts in this process (``host``)."""

    scheme = "host"

    def __init__(self, *, label: str = "host") -> None:
        self.label = label

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, str]) -> "HostRunner":
        if uri not in ("host", "host://"):
            raise InputError(f"runner '{uri}': the host runner takes no address; use 'host'")
        return cls()

    @property
    def uri(self) -> str:
        return self.label

    def run(
        self, artifact: Artifact, config: BenchConfig, *, inputs: Sequence[TensorSpec] | None = None
    ) -> BenchResult:
        if config.accelerator not in HOST_ACCELERATORS:
            raise UnsupportedError(
                f"accelerator '{config.accelerator}': the host runner runs on the CPU only",
                hint="use --accelerator cpu or omit it",
            )
        specs = tuple(inputs) if inputs is not None else artifact.inputs
        feeds = example_inputs(specs, batch=1, seed=config.seed)
        deadline = time.monotonic() + config.timeout_s
        rss = _PeakRss()
        rss.sample()
        loaded = _load(artifact, specs, config.threads)
        try:
            rss.sample()
            started = time.perf_counter()
            _infer(loaded.predictor, feeds, artifact.target_id)
            first_ms = (time.perf_counter() - started) * 1000.0
            rss.sample()
            meter = open_meter()
            thermal_start = read_thermal_zones()
            run = _measure(loaded.predictor, feeds, config, artifact.target_id, meter, rss, deadline)
            energy = meter.stop()
            sustained = (
                _sustain(loaded.predictor, feeds, config.sustained_seconds, artifact.target_id, deadline)
                if config.sustained_seconds > 0
                else None
            )
            thermal, thermal_reason = _thermal(thermal_start, read_thermal_zones())
            rss.sample()
        finally:
            loaded.predictor.close()
        kept = run.samples[run.discarded :]
        wall = run.wall[run.discarded :]
        stats = summarize(kept)
        env = host_env(artifact.runtime, loaded.threads)
        per_inference = energy.mj / len(run.samples) if energy.mj is not None else None
        return BenchResult(
            runner=self.uri,
            device=env["hostname"],
            target=artifact.target_id,
            runtime=artifact.runtime,
            precision=artifact.precision,
            latencies_ms=tuple(round(v, 4) for v in kept),
            **stats.result_fields(),
            warmup_mode="auto" if config.warmup == "auto" else "fixed",
            warmup_discarded=run.discarded if config.warmup == "auto" else int(config.warmup),
            cold_start_ms=loaded.load_ms + first_ms,
            cold_start_reason=None,
            load_ms=loaded.load_ms,
            first_inference_ms=first_ms,
            peak_mem_mb=rss.peak / 2**20 if rss.error is None else None,
            peak_mem_reason=rss.error,
            energy_mj_per_inference=per_inference,
            energy_reason=energy.reason,
            energy_method=energy.method,
            thermal=thermal,
            thermal_reason=thermal_reason,
            sustained=tuple(sustained) if sustained is not None else None,
            sustained_reason=None if sustained is not None else "not requested (sustained_seconds = 0)",
            env=env,
            config=config.to_dict(),
            clock=loaded.predictor.runtime_clock or "wall",
            wall_p50_ms=float(np.median(wall)) if wall else None,
            notes=(MEMORY_NOTE, *run.notes),
        )
