"""One measured candidate (:class:`Trial`) and the three measurements behind it.

A candidate is exported with :func:`edgepack.api.export` (so it is exactly what ``edgepack export --recipe``
produces), its accuracy is measured with the gate (:class:`edgepack.compress.gate.Gate`) against the fp32
source, its latency with a device-bench runner, and its size is the artifact's bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgepack.compress.gate import Gate, GateResult
from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.runners.base import Runner
from edgepack.exporters.base import Exporter, NotRunnable, Predictor
from edgepack.models.source import ModelSource

TrialStatus = Literal["ok", "failed"]


@dataclass
class Trial:
    """A candidate measured at one fidelity (``rung`` 0: eval subset + short bench; 1: full eval + full bench)."""

    key: str
    """Content digest of the recipe (identical candidates share it); ``default@max_drop=X`` for the profile's chain."""
    name: str
    """Recipe name (``search-<digest>``), or ``default:<winning recipe>``."""
    label: str
    rung: int
    status: TrialStatus = "failed"
    error: str | None = None
    recipe_file: str | None = None
    """Path of the recipe TOML, relative to the search's ``--out``."""
    bundle: str | None = None
    """Path of the trial's bundle, relative to ``--out``."""
    precision: str | None = None
    metric: str | None = None
    baseline: float | None = None
    value: float | None = None
    drop: float | None = None
    samples: int | None = None
    latency_ms: float | None = None
    """Median (p50) latency measured by the runner."""
    latency_ci95: tuple[float, float] | None = None
    size_bytes: int | None = None
    seconds: float = 0.0
    bench: dict[str, Any] | None = None
    """The runner's whole :class:`BenchResult` (for the results store)."""
    replayed: bool = field(default=False, compare=False)
    """Read back from the journal rather than measured in this invocation (not serialised)."""

    @property
    def measured(self) -> bool:
        return self.status == "ok" and None not in (self.drop, self.latency_ms, self.size_bytes)

    def objectives(self) -> tuple[float, float, float]:
        assert self.drop is not None and self.latency_ms is not None and self.size_bytes is not None
        return (self.drop, self.latency_ms, float(self.size_bytes))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("replayed")
        data["latency_ci95"] = list(self.latency_ci95) if self.latency_ci95 else None
        return data

    def summary(self) -> dict[str, Any]:
        """What reports show: everything but the raw bench record."""
        data = self.to_dict()
        data.pop("bench")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trial":
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "replayed"}
        if values.get("latency_ci95") is not None:
            values["latency_ci95"] = tuple(values["latency_ci95"])
        return cls(**values, replayed=True)

    def bench_result(self) -> BenchResult | None:
        return BenchResult.from_dict(self.bench) if self.bench else None

    def set_gate(self, gate: GateResult) -> None:
        self.metric = f"{gate.kind}:{gate.metric}"
        self.baseline, self.value, self.drop, self.samples = gate.baseline, gate.value, gate.drop, gate.samples

    def set_bench(self, result: BenchResult) -> None:
        self.latency_ms, self.latency_ci95, self.bench = result.p50, tuple(result.ci95_p50), result.to_dict()


def measure_latency(bundle: Path, target: str, runner: Runner, config: BenchConfig) -> BenchResult:
    """Run the bundle's artifact for ``target`` on ``runner``."""
    from edgepack.bundle.writer import read_manifest
    from edgepack.device_bench.bench import artifact_from_manifest, bench_inputs

    manifest = read_manifest(bundle)
    artifact = artifact_from_manifest(bundle, target, manifest)
    return runner.run(artifact, config, inputs=bench_inputs(manifest, artifact))


@dataclass
class Scorer:
    """The full-fidelity accuracy measurement: every artifact against the same fp32 reference outputs."""

    source: ModelSource
    gate: Gate
    reference: Predictor
    _logits: Any = None

    def score(self, exporter: Exporter, bundle: Path, target: str) -> GateResult | str:
        """The gate result of the bundle's artifact, or why it cannot run on this host."""
        from edgepack.device_bench.bench import artifact_from_manifest

        if self._logits is None:
            self._logits = self.gate.reference_logits(self.reference)
        predictor = exporter.predictor(artifact_from_manifest(bundle, target), self.source)
        if isinstance(predictor, NotRunnable):
            return f"accuracy not measurable here: {predictor.reason}"
        try:
            return self.gate.evaluate(self.reference, predictor, self._logits)
        finally:
            predictor.close()
