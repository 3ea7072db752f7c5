"""Regression detection: tonight's results against a baseline window, per (device, model, target, recipe).

Baseline: the last ``window`` results of the same key in earlier runs (needs ``min_history`` of them);
its p50/p99 are the medians of the per-run p50s/p99s. A latency regression needs both

- statistical evidence: one-sided Mann-Whitney U test of tonight's raw latencies against the pooled
  baseline latencies, ``p < alpha``; and
- a practical size: the lower bound of tonight's p50 95 % CI above the baseline p50 by more than
  ``p50`` (default 5 %), or that of tonight's p99 above the baseline p99 by more than ``p99``
  (default 10 %). Using the CI bound keeps night-to-night noise (and p99, which rests on a handful
  of samples) from alarming.

An accuracy regression is a drop of the gate metric below the baseline median by more than the
gate's ``max_drop`` (or ``accuracy_drop`` when set).

A job planned tonight that left no result (it failed, its device went offline, the run was interrupted)
is ``missing``, with the job's error as the reason, whether or not the key has a history: a device that
failed never disappears silently. :attr:`RegressionReport.failed_devices` names each device that produced
no result at all tonight, with its last error. Output: :class:`RegressionReport` as JSON and JUnit XML
(missing results are failures); the CLI exits 1 when there is a regression or a missing result.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from xml.etree import ElementTree as ET

from pydantic import BaseModel, ConfigDict, Field

from edgepack.errors import InputError

if TYPE_CHECKING:
    from edgepack.farm.store import Store

Status = Literal["regression", "ok", "insufficient-history", "missing"]


class Thresholds(BaseModel):
    """When a change is a regression (the ``[thresholds]`` table of farm.toml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p50: float = Field(0.05, ge=0)
    """Relative p50 increase that matters (0.05 = 5 %)."""
    p99: float = Field(0.10, ge=0)
    alpha: float = Field(0.01, gt=0, lt=1)
    """Significance level of the one-sided Mann-Whitney U test."""
    window: int = Field(7, ge=1)
    """Baseline: the last K results of the same key."""
    min_history: int = Field(3, ge=1)
    """Fewer baseline results than this: no verdict (``insufficient-history``)."""
    accuracy_drop: float | None = Field(None, ge=0)
    """Largest tolerated accuracy drop; ``None``: the gate's ``max_drop`` recorded with the result."""
    max_samples: int = Field(5000, ge=10)
    """Latencies per side fed to the U test (evenly thinned beyond this)."""


class Measured(Protocol):
    """What the comparison reads from a stored result (:class:`edgepack.farm.store.ResultRow`)."""

    run_id: int
    key: tuple[str, str, str, str]
    p50: float
    p99: float | None
    p50_ci: tuple[float, float] | None
    p99_ci: tuple[float, float] | None
    latencies_ms: tuple[float, ...]
    """Empty, and p99/CIs ``None``, for summary-only runners (adb benchmark_model)."""
    accuracy: float | None
    accuracy_max_drop: float | None
    bundle_sha256: str | None


@dataclass(frozen=True)
class Finding:
    """The verdict on one key."""

    device: str
    model: str
    target: str
    recipe: str
    status: Status
    reasons: tuple[str, ...] = ()
    run_id: int | None = None
    baseline_runs: tuple[int, ...] = ()
    p50: float | None = None
    p50_ci_low: float | None = None
    baseline_p50: float | None = None
    p50_change: float | None = None
    p99: float | None = None
    p99_ci_low: float | None = None
    baseline_p99: float | None = None
    p99_change: float | None = None
    p_value: float | None = None
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    bundle_sha256: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.device, self.model, self.target, self.recipe)

    @property
    def name(self) -> str:
        return "/".join(self.key)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        data["baseline_runs"] = list(self.baseline_runs)
        return data


@dataclass(frozen=True)
class RegressionReport:
    farm: str
    run_id: int
    thresholds: Thresholds
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "regression"]

    @property
    def missing(self) -> list[Finding]:
        """Jobs planned tonight that left no result."""
        return [f for f in self.findings if f.status == "missing"]

    @property
    def failed_devices(self) -> dict[str, str]:
        """Devices with jobs tonight and not one result, each with why (its last job's error)."""
        measured = {f.device for f in self.findings if f.status != "missing"}
        failed: dict[str, str] = {}
        for finding in self.missing:
            if finding.device not in measured:
                failed[finding.device] = "; ".join(finding.reasons)
        return failed

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions or self.missing else 0

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for finding in self.findings:
            counts[finding.status] += 1
        return {
            "farm": self.farm,
            "run_id": self.run_id,
            "thresholds": self.thresholds.model_dump(),
            "summary": dict(sorted(counts.items())),
            "regressions": len(self.regressions),
            "missing": len(self.missing),
            "failed_devices": self.failed_devices,
            "findings": [f.to_dict() for f in self.findings],
        }

    def summary(self) -> str:
        """One line: what the CLI prints last."""
        line = f"run {self.run_id} of {self.farm}: {len(self.regressions)} regression(s)"
        if self.missing:
            line += f", {len(self.missing)} missing result(s)"
        line += f" in {len(self.findings)} key(s)"
        if self.failed_devices:
            line += f"; no result tonight from {', '.join(sorted(self.failed_devices))}"
        return line

    def to_junit(self) -> str:
        """JUnit XML: one test case per key; regressions and missing results are failures, no verdict is a skip."""
        suite = ET.Element("testsuite", name=f"edgepack-farm.{self.farm}", tests=str(len(self.findings)),
                           failures=str(len(self.regressions) + len(self.missing)),
                           skipped=str(sum(f.status == "insufficient-history" for f in self.findings)))
        for finding in self.findings:
            case = ET.SubElement(suite, "testcase", classname=f"{self.farm}.{finding.device}",
                                 name=f"{finding.model}/{finding.target}/{finding.recipe}")
            message = "; ".join(finding.reasons)
            if finding.status == "regression":
                ET.SubElement(case, "failure", message=message, type="regression").text = json.dumps(finding.to_dict(), indent=1)
            elif finding.status == "missing":
                ET.SubElement(case, "failure", message=f"no result tonight: {message}", type="missing")
            elif finding.status == "insufficient-history":
                ET.SubElement(case, "skipped", message=f"{finding.status}: {message}")
            else:
                ET.SubElement(case, "system-out").text = message
        ET.indent(suite)
        return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"

    def write(self, json_path: Path | None = None, junit_path: Path | None = None) -> None:
        from edgepack._fs import write_atomic

        if json_path is not None:
            write_atomic(Path(json_path), json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
        if junit_path is not None:
            write_atomic(Path(junit_path), self.to_junit())


def _thin(values: Sequence[float], limit: int) -> list[float]:
    if len(values) <= limit:
        return list(values)
    step = len(values) / limit
    return [values[int(i * step)] for i in range(limit)]


def compare(tonight: Measured, history: Sequence[Measured], thresholds: Thresholds) -> Finding:
    """Verdict on ``tonight`` against ``history`` (earlier results of the same key, oldest first)."""
    from scipy.stats import mannwhitneyu

    device, model, target, recipe = tonight.key
    base = list(history)[-thresholds.window :]
    p50_low = tonight.p50_ci[0] if tonight.p50_ci is not None else tonight.p50
    p99_low = tonight.p99_ci[0] if tonight.p99_ci is not None else None
    common = dict(device=device, model=model, target=target, recipe=recipe, run_id=tonight.run_id,
                  baseline_runs=tuple(b.run_id for b in base), p50=tonight.p50, p50_ci_low=p50_low, p99=tonight.p99,
                  p99_ci_low=p99_low, accuracy=tonight.accuracy, bundle_sha256=tonight.bundle_sha256)
    if len(base) < thresholds.min_history:
        return Finding(status="insufficient-history", **common,
                       reasons=(f"{len(base)} baseline result(s), need {thresholds.min_history}",))
    base_p50 = statistics.median(b.p50 for b in base)
    base_p99s = [b.p99 for b in base if b.p99 is not None]
    base_p99 = statistics.median(base_p99s) if base_p99s else None
    per_run = max(1, thresholds.max_samples // len(base))
    pooled = [v for b in base for v in _thin(b.latencies_ms, per_run)]
    samples = _thin(tonight.latencies_ms, thresholds.max_samples)
    if samples and pooled:
        p_value: float | None = float(mannwhitneyu(samples, pooled, alternative="greater").pvalue)
        significant = p_value < thresholds.alpha
        test = f"U-test p={p_value:.2g}"
    else:  # summary-only results: no samples to test, the practical threshold alone decides
        p_value, significant, test = None, True, "no raw samples: threshold only"
    p50_change = tonight.p50 / base_p50 - 1 if base_p50 > 0 else 0.0
    p50_low_change = p50_low / base_p50 - 1 if base_p50 > 0 else 0.0
    reasons: list[str] = []
    if significant and p50_low_change > thresholds.p50:
        reasons.append(f"p50 {tonight.p50:.4g} ms (95 % CI low {p50_low:.4g}) is {p50_change:+.1%} vs "
                       f"baseline {base_p50:.4g} ms (limit {thresholds.p50:.0%}, {test})")
    p99_change = None
    if tonight.p99 is not None and p99_low is not None and base_p99:
        p99_change = tonight.p99 / base_p99 - 1
        if significant and p99_low / base_p99 - 1 > thresholds.p99:
            reasons.append(f"p99 {tonight.p99:.4g} ms (95 % CI low {p99_low:.4g}) is {p99_change:+.1%} vs "
                           f"baseline {base_p99:.4g} ms (limit {thresholds.p99:.0%}, {test})")
    accuracies = [b.accuracy for b in base if b.accuracy is not None]
    base_accuracy = statistics.median(accuracies) if accuracies else None
    if tonight.accuracy is not None and base_accuracy is not None:
        limit = thresholds.accuracy_drop if thresholds.accuracy_drop is not None else (tonight.accuracy_max_drop or 0.0)
        drop = base_accuracy - tonight.accuracy
        if drop > limit + 1e-12:
            reasons.append(f"accuracy {tonight.accuracy:.4g} dropped {drop:.4g} below baseline {base_accuracy:.4g} (limit {limit:.4g})")
    status: Status = "regression" if reasons else "ok"
    if not reasons:
        p99_text = f"p99 {p99_change:+.1%}" if p99_change is not None else "p99 n/a"
        reasons.append(f"p50 {p50_change:+.1%}, {p99_text}, {test}")
    return Finding(status=status, reasons=tuple(reasons), baseline_p50=base_p50, p50_change=p50_change,
                   baseline_p99=base_p99, p99_change=p99_change, p_value=p_value, baseline_accuracy=base_accuracy,
                   **common)


def thresholds_for(config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Thresholds:
    """The run's ``[thresholds]`` with ``overrides`` (values that are ``None`` are ignored)."""
    base = dict(config.get("thresholds") or {})
    base.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Thresholds.model_validate(base)
    except ValueError as exc:
        raise InputError(f"thresholds: {exc}".splitlines()[0]) from None


def detect(
    store: "Store", *, farm: str | None = None, run_id: int | None = None, overrides: Mapping[str, Any] | None = None
) -> RegressionReport:
    """Compare run ``run_id`` (default: the latest run of ``farm``, or the latest run) with its history."""
    runs = store.runs(farm)
    if not runs:
        raise InputError(f"no runs{f' of farm {farm!r}' if farm else ''} in {store.url}")
    if run_id is None:
        tonight_run = runs[-1]
    else:
        tonight_run = next((r for r in runs if r.id == run_id), None)
        if tonight_run is None:
            raise InputError(f"run {run_id}: not in {store.url}" + (f" (farm {farm!r})" if farm else ""))
    thresholds = thresholds_for(tonight_run.config, overrides)
    order = {r.id: i for i, r in enumerate(store.runs(tonight_run.farm))}
    history: dict[tuple[str, str, str, str], list[Any]] = defaultdict(list)
    tonight: dict[tuple[str, str, str, str], Any] = {}
    for row in store.results(farm=tonight_run.farm):
        if row.run_id == tonight_run.id:
            tonight[row.key] = row
        elif order[row.run_id] < order[tonight_run.id]:
            history[row.key].append(row)
    findings = [compare(tonight[key], history.get(key, []), thresholds) for key in sorted(tonight)]
    jobs = {job.spec.key: job for job in store.jobs(tonight_run.id)}
    for key in sorted(set(jobs) - set(tonight)):  # keys of earlier runs not planned tonight are retired, not missing
        job = jobs[key]
        why = f"job {job.status}" + (f": {job.error}" if job.error else "")
        if job.status in ("pending", "running"):
            why += f" (run {tonight_run.status})"
        findings.append(Finding(*key, status="missing", reasons=(why,), run_id=tonight_run.id,
                                baseline_runs=tuple(r.run_id for r in history.get(key, [])[-thresholds.window:])))
    return RegressionReport(tonight_run.farm, tonight_run.id, thresholds, tuple(findings))
