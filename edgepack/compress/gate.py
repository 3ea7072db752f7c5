"""The accuracy gate: an artifact ships only if its metric drops at most ``max_drop`` below the source's.

With labelled eval data the metric is top-1 accuracy. Without it the gate is a *fidelity* gate (top-1
agreement with the fp32 source for classifier outputs, else mean cosine) and says so in ``kind``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from edgepack.data.dataset import Dataset
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

    def evaluate(self, reference: Predictor, candidate: Predictor, reference_logits: np.ndarray | None = None) -> GateResult:
        ref = reference_logits if reference_logits is not None else _logits(reference, self.data, self.output)
        got = _logits(candidate, self.data, self.output)
        if self.data.labels is not None:
            kind, metric = "accuracy", "top1"
            baseline, value = top1_accuracy(ref, self.data.labels), top1_accuracy(got, self.data.labels)
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

    def reference_logits(self, reference: Predictor) -> np.ndarray:
        """Reference outputs, computed once and reused across recipe attempts."""
        return _logits(reference, self.data, self.output)




def with_latency(result: GateResult, speedup: float, tolerance: float, *, enforce: bool = True) -> GateResult:
    """Add the measured speed-up over the same runtime's fp32 artifact; reject a slower artifact when
    ``enforce`` (the host is the target), else only record it."""
    if speedup >= 1.0 - tolerance or not enforce:
        return replace(result, latency_ratio=speedup)
    reason = f"slower than fp32 on this host ({speedup:.2f}x the fp32 speed)"
    if not result.passed:
        reason = f"{result.reason}; {reason}"
    return replace(result, latency_ratio=speedup, passed=False, reason=reason)
