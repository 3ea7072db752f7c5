"""What a benchmark run is asked to do (:class:`BenchConfig`) and what it measured (:class:`BenchResult`).

Both round-trip through JSON: the SSH runner ships a config to the on-device agent and reads a result
back. Loading rejects unknown keys. Every measurement that could not be taken is ``None`` together with
a ``*_reason`` string that says why; nothing is estimated.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from edgepack.errors import InputError

RESULT_SCHEMA_VERSION = 1

Warmup = int | Literal["auto"]


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object")
    return data


def _check_keys(cls: type, data: dict[str, Any], what: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{what}: unknown key(s) {unknown}", hint=f"known keys: {', '.join(sorted(known))}")


@dataclass(frozen=True)
class BenchConfig:
    """How long and how to measure.

    A run stops when it has both ``min_iters`` kept iterations and ``min_seconds`` of timed inference,
    or at ``max_iters`` / ``timeout_s`` (the result then carries a note).
    """

    warmup: Warmup = "auto"
    """Untimed iterations before measuring, or ``"auto"``: measure from the first iteration and discard
    the detected warm-up prefix (:func:`edgepack.device_bench.stats.detect_warmup`)."""
    min_iters: int = 100
    min_seconds: float = 2.0
    threads: int | None = None
    """Intra-op threads of the runtime; ``None`` keeps the runtime adapter's default (recorded in env)."""
    accelerator: str | None = None
    """Which unit to run on (``None`` or ``"cpu"`` on the host runner)."""
    sustained_seconds: float = 0.0
    """After the measurement, run this long and record latency over time (throttling curves)."""
    max_iters: int = 100_000
    timeout_s: float = 600.0
    """Wall-clock bound of one artifact's run (load, measurement and sustained phase)."""
    seed: int = 0
    """Seed of the synthetic inputs built from the artifact's input specs."""
    batch: int = 1
    """Samples per inference: the size given to every input's batch (symbolic first) dimension; artifacts
    with a static batch are measured at that batch only (:func:`edgepack.device_bench.bench.bench_inputs`)."""

    def __post_init__(self) -> None:
        if not (self.warmup == "auto" or (isinstance(self.warmup, int) and not isinstance(self.warmup, bool))):
            raise InputError(f"warmup {self.warmup!r}: expected a number of iterations or 'auto'")
        checks = (
            ("warmup", self.warmup if isinstance(self.warmup, int) else 0, 0),
            ("min_iters", self.min_iters, 1),
            ("min_seconds", self.min_seconds, 0),
            ("sustained_seconds", self.sustained_seconds, 0),
            ("max_iters", self.max_iters, 1),
            ("batch", self.batch, 1),
            ("timeout_s", self.timeout_s, 0),
        )
        for name, value, lowest in checks:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < lowest:
                raise InputError(f"{name} {value!r}: must be a number >= {lowest}")
        if self.timeout_s == 0:
            raise InputError("timeout_s 0: must be positive")
        if self.max_iters < self.min_iters:
            raise InputError(f"max_iters {self.max_iters} is below min_iters {self.min_iters}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"threads {self.threads!r}: must be a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchConfig":
        _check_keys(cls, data, "bench config")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "BenchConfig":
        return cls.from_dict(_json_object(text, "bench config"))


_REASONED = (
    ("cold_start_ms", "cold_start_reason"),
    ("peak_mem_mb", "peak_mem_reason"),
    ("energy_mj_per_inference", "energy_reason"),
    ("thermal", "thermal_reason"),
    ("sustained", "sustained_reason"),
)
"""(measurement, reason) pairs: exactly one of the two is ``None``."""

_SAMPLE_STATS = ("p90", "p99", "ci95_p50", "ci95_p99", "outliers")
"""Statistics that need per-iteration samples; ``None`` only with ``percentiles_reason``."""


@dataclass(frozen=True)
class BenchResult:
    """One artifact measured by one runner on one device. Latencies are milliseconds."""

    runner: str
    device: str
    target: str
    runtime: str
    precision: str
    latencies_ms: tuple[float, ...]
    """Kept samples in run order (the warm-up prefix is not included)."""
    p50: float
    p90: float | None
    p95: float
    p99: float | None
    mean: float
    std: float
    min: float
    max: float
    ci95_p50: tuple[float, float] | None
    ci95_p99: tuple[float, float] | None
    outliers: int | None
    outlier_policy: str
    warmup_mode: str
    """``"fixed"`` (config.warmup untimed iterations) or ``"auto"`` (detected and discarded)."""
    warmup_discarded: int
    cold_start_ms: float | None
    """Load of a fresh predictor plus its first inference."""
    cold_start_reason: str | None
    peak_mem_mb: float | None
    peak_mem_reason: str | None
    energy_mj_per_inference: float | None
    energy_reason: str | None
    thermal: dict[str, Any] | None
    thermal_reason: str | None
    sustained: tuple[tuple[float, float], ...] | None
    """(seconds since the sustained phase began, median latency ms in that time bin)."""
    sustained_reason: str | None
    env: dict[str, Any]
    config: dict[str, Any]
    load_ms: float | None = None
    first_inference_ms: float | None = None
    energy_method: str | None = None
    notes: tuple[str, ...] = ()
    clock: str = "wall"
    """What ``latencies_ms`` time: ``"wall"`` (the whole predictor call, edgepack's input/output handling
    included) or the runtime's own per-inference clock where it keeps one (e.g. OpenVINO's
    ``InferRequest.latency``, which ``benchmark_app`` reports), so the numbers compare with the vendor tool."""
    wall_p50_ms: float | None = None
    """With a runtime clock: the p50 of the same calls timed on the wall (the difference is the harness's
    per-call cost, which an app calling the runtime natively does not pay)."""
    percentiles_reason: str | None = None
    """Why p90/p99, their confidence intervals or the outlier count are ``None``: the runner's tool publishes
    summary statistics only (TFLite benchmark_model), so there are no per-iteration samples."""
    schema_version: int = RESULT_SCHEMA_VERSION

    def __post_init__(self) -> None:
        for value_name, reason_name in _REASONED:
            if (getattr(self, value_name) is None) == (getattr(self, reason_name) is None):
                raise ValueError(f"exactly one of {value_name} and {reason_name} must be set")
        missing = [name for name in _SAMPLE_STATS if getattr(self, name) is None]
        if missing and not self.percentiles_reason:
            raise ValueError(f"{', '.join(missing)} may only be None together with percentiles_reason")

    @property
    def iterations(self) -> int:
        return len(self.latencies_ms)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latencies_ms"] = list(self.latencies_ms)
        data["ci95_p50"] = list(self.ci95_p50) if self.ci95_p50 is not None else None
        data["ci95_p99"] = list(self.ci95_p99) if self.ci95_p99 is not None else None
        data["sustained"] = [list(p) for p in self.sustained] if self.sustained is not None else None
        data["notes"] = list(self.notes)
        return data

    def to_json(self) -> str:
        """One line of JSON (what the agent prints)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchResult":
        _check_keys(cls, data, "bench result")
        version = data.get("schema_version", RESULT_SCHEMA_VERSION)
        if version != RESULT_SCHEMA_VERSION:
            raise InputError(
                f"bench result: schema_version {version!r} is not supported (expected {RESULT_SCHEMA_VERSION})"
            )
        values = dict(data)
        try:
            values["latencies_ms"] = tuple(float(v) for v in data["latencies_ms"])
            for name in ("ci95_p50", "ci95_p99"):
                pair = data[name]
                values[name] = (float(pair[0]), float(pair[1])) if pair is not None else None
            sustained = data.get("sustained")
            values["sustained"] = tuple((float(t), float(v)) for t, v in sustained) if sustained is not None else None
            values["notes"] = tuple(str(n) for n in data.get("notes", ()))
            return cls(**values)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"bench result: malformed: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "BenchResult":
        return cls.from_dict(_json_object(text, "bench result"))
