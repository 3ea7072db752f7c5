"""The accuracy gate: an artifact ships only if its metric drops at most ``max_drop`` below the source's.

Metrics: with labelled eval data, top-1 (default) or top-k accuracy (``metric="top5"``); ``metric="cosine"``
compares outputs with the fp32 source's (embeddings); a user function (``--eval module:function``) scores
a predictor itself; ``metric="map50"`` (``--postprocess nms`` artifacts) is the mAP@0.5 of the artifact's
detections against the fp32 model's (:mod:`edgepack.postprocess.reference`). Without labels or a function
the gate is a *fidelity* gate and says so in ``kind``; the metric fits the output (:func:`fidelity_metric`):
top-1 agreement with the fp32 source for class logits ``[N, C]``, per-step argmax agreement for sequence logits ``[N, T, C]``, IoU of thresholded maps for dense
maps ``[N, 1, H, W]`` / ``[N, H, W, 1]``, mean cosine otherwise (and for outputs named like embeddings).

Resolution: the verdict is taken on the point estimate of the drop (as always), and every result also
carries ``samples``, the 95 % interval of the drop (``drop_ci95``) and whether the data can resolve
``max_drop`` at all (``resolvable``: one changed prediction, ``1/samples``, is at most ``max_drop / 2``).
Without labels the fidelity set has :func:`fidelity_samples` samples so that it can; labelled eval data too
small to resolve the threshold gets a one-sentence ``note`` saying so.

Intervals: for top-1 / per-sample agreement the drop is the disagreement rate, and its interval is Wilson's
score interval; for accuracy on labelled data the drop is a difference of two paired proportions (the
fp32 model and the artifact on the same samples), and its interval is Newcombe's (1998, method 10: Wilson
intervals of both rates combined with their correlation); for continuous per-sample scores (cosine, IoU,
per-step agreement) it is a percentile bootstrap of the mean (2,000 resamples, fixed seed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from edgepack.data.dataset import Dataset
from edgepack.data.metric_function import MetricFunction
from edgepack.errors import DataError, InputError
from edgepack.exporters.base import Predictor

FIDELITY_MIN_SAMPLES = 32
FIDELITY_MAX_SAMPLES = 256
"""Bounds of :func:`fidelity_samples` (256 keeps a 224x224 image set near 150 MB and a run cheap)."""
Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
EMBEDDING_WORDS = ("hidden", "embed", "feature", "pooler", "state", "encoder", "vector")
"""An output whose name contains one of these is compared by cosine, whatever its shape."""


def fidelity_samples(max_drop: float) -> int:
    """How many samples a fidelity gate needs so one changed prediction is at most half of ``max_drop``.

    ``n = ceil(2 / max_drop)``, kept within [:data:`FIDELITY_MIN_SAMPLES`, :data:`FIDELITY_MAX_SAMPLES`]
    (``max_drop`` 0.01 -> 200, 0.05 -> 40, 0.005 -> 256, where the result says it is not resolvable).
    """
    if not max_drop > 0:
        return FIDELITY_MAX_SAMPLES
    need = math.ceil(2.0 / max_drop - 1e-9)
    return int(min(FIDELITY_MAX_SAMPLES, max(FIDELITY_MIN_SAMPLES, need)))


def resolves(samples: int, max_drop: float) -> bool:
    """Whether ``samples`` can resolve ``max_drop``: one changed prediction (``1/samples``) is at most half of it."""
    return samples > 0 and 1.0 / samples <= max_drop / 2 + 1e-12


def unresolvable_note(samples: int, max_drop: float, what: str = "eval data") -> str | None:
    """One sentence saying that ``samples`` cannot resolve ``max_drop``; ``None`` when they can."""
    if samples <= 0 or resolves(samples, max_drop):
        return None
    need = math.ceil(2.0 / max_drop - 1e-9) if max_drop > 0 else None
    needs = f" (it needs at least {need} samples)" if need else ""
    return (f"{what} has {samples} samples: one changed prediction is a {100.0 / samples:.1f}-point drop, "
            f"more than half of --max-drop {100.0 * max_drop:.1f} points; the gate cannot resolve its threshold{needs}")


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
    drop_ci95: tuple[float, float] | None = None
    """95 % interval of ``drop`` (``None`` for a user metric function: it reports one number)."""
    resolvable: bool | None = None
    """Whether one changed prediction (``1/samples``) is at most ``max_drop / 2`` (``None``: user metric)."""
    note: str | None = None
    """Set when the data cannot resolve ``max_drop`` (one sentence for the CLI and the model card)."""

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["drop_ci95"] = None if self.drop_ci95 is None else [float(v) for v in self.drop_ci95]
        return out


def _logits(predictor: Predictor, data: Dataset, output: str) -> np.ndarray:
    # One sample per call: many artifacts (TFLite, Core ML, TensorRT) have a fixed batch of one.
    return np.concatenate([predictor(batch)[output] for batch in data.batches()], axis=0)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(_top1_correct(logits, labels)))


def _top1_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.argmax(logits.reshape(len(labels), -1), axis=1) == labels


def _topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    scores = logits.reshape(len(labels), -1)
    top = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the ``k`` highest scores."""
    return float(np.mean(_topk_correct(logits, labels, k)))


DETECTION_METRIC = "map50"
"""mAP@0.5 of the artifact's NMS detections against the fp32 model's (a fidelity metric: no box labels)."""
METRICS = ("auto", "cosine", "top1", "topK (e.g. top5)", DETECTION_METRIC)


def parse_metric(text: str) -> str:
    """Canonical metric name: ``auto``, ``cosine`` or ``topK``; :class:`InputError` otherwise."""
    name = text.strip().lower().replace("-", "")
    if name in ("auto", "cosine", DETECTION_METRIC) or (name.startswith("top") and name[3:].isdigit() and int(name[3:]) >= 1):
        return name
    raise InputError(f"--metric {text}: unknown metric", hint=f"use one of {', '.join(METRICS)}")


def _detections(predictor: Predictor, data: Dataset) -> np.ndarray:
    """``[S, max_det, 6]`` rows ``x1, y1, x2, y2, score, class`` per sample; rows past ``count`` have class -1."""
    packed = []
    for batch in data.batches():
        out = predictor(batch)
        boxes = np.asarray(out["boxes"], np.float64).reshape(-1, 4)
        rows = np.concatenate([boxes, np.asarray(out["scores"], np.float64).reshape(-1, 1),
                               np.asarray(out["classes"], np.float64).reshape(-1, 1)], axis=1)
        rows[int(np.asarray(out["count"]).reshape(-1)[0]):, 5] = -1.0
        packed.append(rows)
    return np.stack(packed)


def detection_map_vs(ref: np.ndarray, got: np.ndarray) -> float:
    """mAP@0.5 of the packed detections ``got`` (see :func:`_detections`) with ``ref`` as ground truth."""
    from edgepack.postprocess.reference import detection_map

    predicted, truth = [], []
    for r, g in zip(ref, got):
        r, g = r[r[:, 5] >= 0], g[g[:, 5] >= 0]
        truth.append((r[:, :4], r[:, 5].astype(np.int64)))
        predicted.append((g[:, :4], g[:, 4], g[:, 5].astype(np.int64)))
    return detection_map(predicted, truth)


# --- per-sample fidelity scores (1 = identical to fp32) ---------------------------------------------------

def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(cosine_per_sample(a, b)))


def top1_agreement_per_sample(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """1.0 where the artifact's top-1 class of ``[N, C]`` logits is the fp32 model's, else 0.0."""
    return (np.argmax(ref.reshape(len(ref), -1), axis=1) == np.argmax(got.reshape(len(got), -1), axis=1)).astype(np.float64)


def step_agreement_per_sample(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Share of the ``T`` steps of ``[N, T, C]`` sequence logits whose argmax is the fp32 model's."""
    return np.mean(np.argmax(ref, axis=-1) == np.argmax(got, axis=-1), axis=1).astype(np.float64)


def map_threshold(ref: np.ndarray) -> np.ndarray:
    """Per-sample threshold of dense maps: 0.5 when every fp32 value lies in [0, 1] (probability maps),
    else each fp32 map's mean (logit or unnormalised maps)."""
    flat = ref.reshape(len(ref), -1).astype(np.float64)
    if flat.size and flat.min() >= 0.0 and flat.max() <= 1.0:
        return np.full(len(ref), 0.5)
    return flat.mean(axis=1)


def iou_per_sample(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """IoU of the maps thresholded at :func:`map_threshold` of the fp32 map (1.0 where both are empty)."""
    threshold = map_threshold(ref)[:, None]
    a = ref.reshape(len(ref), -1) > threshold
    b = got.reshape(len(got), -1) > threshold
    inter, union = (a & b).sum(axis=1), (a | b).sum(axis=1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0).astype(np.float64)


FIDELITY_METRICS = {
    "top1_agreement_vs_fp32": top1_agreement_per_sample,
    "step_agreement_vs_fp32": step_agreement_per_sample,
    "iou_vs_fp32": iou_per_sample,
    "cosine_vs_fp32": cosine_per_sample,
}


def fidelity_metric(ref: np.ndarray, output: str = "") -> str:
    """The fidelity metric that fits an output of shape ``ref.shape`` (named ``output``): a key of
    :data:`FIDELITY_METRICS`. Outputs named like embeddings (:data:`EMBEDDING_WORDS`) use cosine."""
    shape = ref.shape
    if any(word in output.lower() for word in EMBEDDING_WORDS):
        return "cosine_vs_fp32"
    if len(shape) == 2 and shape[1] > 1:
        return "top1_agreement_vs_fp32"
    if len(shape) == 3 and shape[2] > 1:
        return "step_agreement_vs_fp32"
    if len(shape) == 4 and shape[1] == 1 and shape[2] * shape[3] > 1:
        return "iou_vs_fp32"
    if len(shape) == 4 and shape[3] == 1 and shape[1] * shape[2] > 1:
        return "iou_vs_fp32"
    return "cosine_vs_fp32"


# --- intervals ----------------------------------------------------------------------------------------------

def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return (low, high)


def square_and_add_interval(x1: float, n1: int, x2: float, n2: int, phi: float = 0.0, z: float = Z95) -> tuple[float, float]:
    """Newcombe's interval for ``x1/n1 - x2/n2`` from the Wilson intervals of both proportions; ``phi`` is
    their correlation (0 for independent samples, Newcombe 1998a method 10; paired data: 1998b method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    theta = p1 - p2
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    epsilon = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return (max(-1.0, theta - delta), min(1.0, theta + epsilon))


def paired_difference_interval(first: np.ndarray, second: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """Newcombe's interval (1998b, method 10) for ``mean(first) - mean(second)`` of paired binary outcomes,
    with his continuity-corrected correlation of the two outcomes."""
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    n = len(first)
    if n == 0:
        return (-1.0, 1.0)
    a = float(np.sum(first & second))
    b = float(np.sum(first & ~second))
    c = float(np.sum(~first & second))
    d = float(n - a - b - c)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if cross > 0:
        cross = max(cross - n / 2, 0.0)
    phi = cross / math.sqrt(denom) if denom > 0 else 0.0
    return square_and_add_interval(a + b, n, a + c, n, phi, z)


def bootstrap_mean_interval(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of ``mean(values)`` (deterministic: fixed seed)."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return (0.0, 0.0)
    mean = float(values.mean())
    if n == 1 or np.all(values == values[0]):
        return (mean, mean)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (min(float(low), mean), max(float(high), mean))


def fidelity_drop_interval(scores: np.ndarray) -> tuple[float, float]:
    """95 % interval of ``1 - mean(scores)``: Wilson on the disagreement count for 0/1 scores, else bootstrap."""
    scores = np.asarray(scores, np.float64)
    if np.all((scores == 0.0) | (scores == 1.0)):
        return wilson_interval(float(len(scores) - scores.sum()), len(scores))
    low, high = bootstrap_mean_interval(1.0 - scores)
    return (low, high)


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
    """``auto`` (top-1 with labels, else the fidelity metric that fits the output), ``topK``, or ``cosine``
    (vs the fp32 outputs)."""
    scorer: MetricFunction | None = None
    """A user metric ``scorer(predictor) -> float`` (higher is better); replaces the built-in metrics."""
    scorer_name: str = ""
    _reference_scores: dict[int, float] = field(default_factory=dict, compare=False, repr=False)

    def evaluate(self, reference: Predictor, candidate: Predictor, reference_logits: np.ndarray | None = None) -> GateResult:
        if self.scorer is not None:
            return self._evaluate_scorer(reference, candidate)
        ref = reference_logits if reference_logits is not None else self.reference_logits(reference)
        got = self._collect(candidate)
        labels = self.data.labels
        n = len(ref)
        if self.metric == DETECTION_METRIC:
            return self._evaluate_detections(ref, got)
        if labels is not None and self.metric != "cosine":
            if self.metric.startswith("top") and self.metric != "top1":
                k = int(self.metric[3:])
                metric, ref_ok, got_ok = self.metric, _topk_correct(ref, labels, k), _topk_correct(got, labels, k)
            else:
                metric, ref_ok, got_ok = "top1", _top1_correct(ref, labels), _top1_correct(got, labels)
            kind = "accuracy"
            baseline, value = float(np.mean(ref_ok)), float(np.mean(got_ok))
            interval = paired_difference_interval(ref_ok, got_ok)
        else:
            kind = "fidelity"
            metric = "cosine_vs_fp32" if self.metric == "cosine" else fidelity_metric(ref, self.output)
            scores = FIDELITY_METRICS[metric](ref, got)
            baseline, value = 1.0, float(np.mean(scores))
            interval = fidelity_drop_interval(scores)
        drop = baseline - value
        interval = (min(interval[0], drop), max(interval[1], drop))
        passed = drop <= self.max_drop + 1e-12
        reason = "passed" if passed else f"{metric} dropped {drop:.4f} > max {self.max_drop:.4f}"
        what = "eval data" if labels is not None else "the fidelity set"
        return GateResult(kind, metric, baseline, value, drop, self.max_drop, n, passed, reason,
                          drop_ci95=(math.floor(interval[0] * 1e6) / 1e6, math.ceil(interval[1] * 1e6) / 1e6),
                          resolvable=resolves(n, self.max_drop), note=unresolvable_note(n, self.max_drop, what))

    def _collect(self, predictor: Predictor) -> np.ndarray:
        if self.metric == DETECTION_METRIC:
            return _detections(predictor, self.data)
        return _logits(predictor, self.data, self.output)

    def _evaluate_detections(self, ref: np.ndarray, got: np.ndarray) -> GateResult:
        """Fidelity of NMS detections: mAP@0.5 against the fp32 model's boxes (1.0 for the fp32 model itself).
        No interval: mAP is not a mean of per-sample scores."""
        value = detection_map_vs(ref, got)
        drop = 1.0 - value
        passed = drop <= self.max_drop + 1e-12
        reason = "passed" if passed else f"{DETECTION_METRIC}_vs_fp32 dropped {drop:.4f} > max {self.max_drop:.4f}"
        return GateResult("fidelity", f"{DETECTION_METRIC}_vs_fp32", 1.0, value, drop, self.max_drop, len(ref), passed,
                          reason)

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
        return self._collect(reference)


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
