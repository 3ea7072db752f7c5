"""The accuracy gate: an artifact ships only if its metric drops at most ``max_drop`` below the source's.

Metrics: with labelled eval data, top-1 (default) or top-k accuracy (``metric="top5"``); ``metric="cosine"``
compares outputs with the fp32 source's (embeddings); a user function (``--eval module:function``) scores
a predictor itself. Without labels or a function the gate is a *fidelity* gate (top-1 agreement with the
fp32 source for classifier outputs, else mean cosine) and says so in ``kind``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from edgepack.data.dataset import Dataset
from edgepack.data.metric_function import MetricFunction
from edgepack.errors import DataError, InputError
from edgepack.exporters.base import Predictor


@dataclass(frozen=True)
class GateResult:
    """Metric of the fp32 source (``baseline``) and the artifact (``value``), and the verdict."""

    kind: Literal["accuracy", "fidelity"]
    metric: str
    baseline: float
    value: float
    drop: float
    max_drop: float
    samples: int
    passed: bool
    reason: str
    latency_ratio: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _logits(predictor: Predictor, data: Dataset, output: str) -> np.ndarray:
    return np.concatenate([predictor(batch)[output] for batch in data.batches()], axis=0)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits.reshape(len(labels), -1), axis=1) == labels))


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the ``k`` highest scores."""
    scores = logits.reshape(len(labels), -1)
    top = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


METRICS = ("auto", "cosine", "top1", "topK (e.g. top5)")


def parse_metric(text: str) -> str:
    """Canonical metric name: ``auto``, ``cosine`` or ``topK``; :class:`InputError` otherwise."""
    name = text.strip().lower().replace("-", "")
    if name in ("auto", "cosine") or (name.startswith("top") and name[3:].isdigit() and int(name[3:]) >= 1):
        return name
    raise InputError(f"--metric {text}: unknown metric", hint=f"use one of {', '.join(METRICS)}")


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)))


@dataclass(frozen=True)
class Gate:
    """Evaluates candidates on ``data`` against the reference's metric, allowing ``max_drop``.

    ``output`` is the name of the output the metric reads (the first output by default).
    """

    data: Dataset
    output: str
    max_drop: float = 0.01
    latency_tolerance: float = 0.05
    """A compressed artifact may be at most this fraction slower than fp32 (measurement noise), no more."""
    metric: str = "auto"
    """``auto`` (top-1 with labels, else fidelity), ``topK``, or ``cosine`` (vs the fp32 outputs)."""
    scorer: MetricFunction | None = None
    """A user metric ``scorer(predictor) -> float`` (higher is better); replaces the built-in metrics."""
    scorer_name: str = ""
    _reference_scores: dict[int, float] = field(default_factory=dict, compare=False, repr=False)

    def evaluate(self, reference: Predictor, candidate: Predictor, reference_logits: np.ndarray | None = None) -> GateResult:
        if self.scorer is not None:
            return self._evaluate_scorer(reference, candidate)
        ref = reference_logits if reference_logits is not None else _logits(reference, self.data, self.output)
        got = _logits(candidate, self.data, self.output)
        labels = self.data.labels
        if self.metric == "cosine":
            kind, metric = "fidelity", "cosine_vs_fp32"
            baseline, value = 1.0, _cosine_rows(ref, got)
        elif labels is not None and self.metric.startswith("top") and self.metric != "top1":
            k = int(self.metric[3:])
            kind, metric = "accuracy", self.metric
            baseline, value = topk_accuracy(ref, labels, k), topk_accuracy(got, labels, k)
        elif labels is not None:
            kind, metric = "accuracy", "top1"
            baseline, value = top1_accuracy(ref, labels), top1_accuracy(got, labels)
        elif ref.ndim == 2 and ref.shape[1] > 1:
            kind, metric = "fidelity", "top1_agreement_vs_fp32"
            baseline, value = 1.0, float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))
        else:
            kind, metric = "fidelity", "cosine_vs_fp32"
            baseline, value = 1.0, _cosine_rows(ref, got)
        drop = baseline - value
        passed = drop <= self.max_drop + 1e-12
        reason = "passed" if passed else f"{metric} dropped {drop:.4f} > max {self.max_drop:.4f}"
        return GateResult(kind, metric, baseline, value, drop, self.max_drop, len(self.data), passed, reason)

    def _evaluate_scorer(self, reference: Predictor, candidate: Predictor) -> GateResult:
        assert self.scorer is not None
        key = id(reference)
        if key not in self._reference_scores:  # the fp32 source is scored once per export
            self._reference_scores[key] = _score(self.scorer, reference, self.scorer_name)
        baseline, value = self._reference_scores[key], _score(self.scorer, candidate, self.scorer_name)
        drop = baseline - value
        passed = drop <= self.max_drop + 1e-12
        reason = "passed" if passed else f"{self.scorer_name} dropped {drop:.4f} > max {self.max_drop:.4f}"
        return GateResult("accuracy", self.scorer_name, baseline, value, drop, self.max_drop, 0, passed, reason)

    def reference_logits(self, reference: Predictor) -> np.ndarray:
        """Reference outputs, computed once and reused across recipe attempts."""
        return _logits(reference, self.data, self.output)




def _score(scorer: MetricFunction, predictor: Predictor, name: str) -> float:
    try:
        value = float(scorer(predictor))
    except Exception as exc:  # noqa: BLE001 - user code: one clear line, the target records it
        raise DataError(f"--eval {name} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not np.isfinite(value):
        raise DataError(f"--eval {name} returned {value}; a metric must be a finite number")
    return value


def with_latency(result: GateResult, speedup: float, tolerance: float, *, enforce: bool = True) -> GateResult:
    """Add the measured speed-up over the same runtime's fp32 artifact; reject a slower artifact when
    ``enforce`` (the host is the target), else only record it."""
    if speedup >= 1.0 - tolerance or not enforce:
        return replace(result, latency_ratio=speedup)
    reason = f"slower than fp32 on this host ({speedup:.2f}x the fp32 speed)"
    if not result.passed:
        reason = f"{result.reason}; {reason}"
    return replace(result, latency_ratio=speedup, passed=False, reason=reason)
