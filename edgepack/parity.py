"""Numeric parity: an artifact's outputs vs the source model's on the same held-out inputs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from edgepack.compress.recipe import ParityTolerance
from edgepack.exporters.base import Arrays, Predictor


@dataclass(frozen=True)
class ParityReport:
    """Worst-case and mean agreement over ``samples`` inputs, and the verdict under ``tolerance``."""

    samples: int
    max_abs_error: float
    max_rel_error: float
    mean_cosine: float
    min_cosine: float
    top1_agreement: float | None
    tolerance: dict[str, float | None]
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.3f}"
        return f"cosine {self.mean_cosine:.6f} (min {self.min_cosine:.6f}), rel err {self.max_rel_error:.2e}{top1}"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays (flattened, float64); two all-zero arrays are 1 when equal, else 0."""
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norm)


def _is_classifier_output(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] > 1


def compare(
    reference: Predictor, candidate: Predictor, batches: Iterable[Arrays], tolerance: ParityTolerance
) -> ParityReport:
    """Run both predictors on every batch and judge the differences against ``tolerance``."""
    max_abs = 0.0
    ref_scale = 0.0
    cosines: list[float] = []
    agree: list[bool] = []
    count = 0
    for batch in batches:
        expected = reference(batch)
        actual = candidate(batch)
        count += 1
        for name, ref in expected.items():
            got = np.asarray(actual[name]).reshape(ref.shape).astype(np.float64)
            ref64 = ref.astype(np.float64)
            max_abs = max(max_abs, float(np.max(np.abs(got - ref64))) if ref.size else 0.0)
            ref_scale = max(ref_scale, float(np.max(np.abs(ref64))) if ref.size else 0.0)
            cosines.append(cosine(ref64, got))
            if _is_classifier_output(ref):
                agree.extend((np.argmax(ref, axis=1) == np.argmax(got, axis=1)).tolist())
    if count == 0:
        raise ValueError("parity needs at least one input batch")
    rel = max_abs / ref_scale if ref_scale > 0 else max_abs
    mean_cos, min_cos = float(np.mean(cosines)), float(np.min(cosines))
    top1 = float(np.mean(agree)) if agree else None
    problems = []
    if not np.isfinite(max_abs):
        problems.append("non-finite outputs")
    if rel > tolerance.max_rel_error:
        problems.append(f"relative error {rel:.3e} > {tolerance.max_rel_error:.1e}")
    if mean_cos < tolerance.min_cosine:
        problems.append(f"cosine {mean_cos:.6f} < {tolerance.min_cosine}")
    if tolerance.min_top1_agreement is not None and top1 is not None and top1 < tolerance.min_top1_agreement:
        problems.append(f"top-1 agreement {top1:.3f} < {tolerance.min_top1_agreement}")
    return ParityReport(
        samples=count,
        max_abs_error=max_abs,
        max_rel_error=rel,
        mean_cosine=mean_cos,
        min_cosine=min_cos,
        top1_agreement=top1,
        tolerance=tolerance.model_dump(),
        passed=not problems,
        reason="; ".join(problems) if problems else "within tolerance",
    )
