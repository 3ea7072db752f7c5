"""Latency statistics: percentiles, bootstrap confidence intervals, outliers and warm-up detection.

Policies (stated here and in every :class:`LatencyStats`):

* **Outliers** are *flagged, never dropped*: every kept sample enters every statistic; values above
  ``Q3 + 3 * IQR`` are counted in ``outliers`` so that a noisy run is visible.
* **Warm-up**: :func:`detect_warmup` discards leading iterations until a rolling median settles within
  5 % of the steady-state median (the median of the second half of the run) -- or within 3 standard
  errors of a window median where the run is noisier than that -- capped at half the run.
* **Confidence intervals** are percentile-bootstrap 95 % intervals (1000 resamples, seeded), so the same
  samples always give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
OUTLIER_IQR_FACTOR = 3.0
OUTLIER_POLICY = (
    f"all samples kept; values above Q3 + {OUTLIER_IQR_FACTOR:g}*IQR are counted as outliers, not dropped"
)
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000
"""Resamples are drawn in chunks of at most this many values, so memory stays bounded for long runs."""
WARMUP_TOLERANCE = 0.05
WARMUP_NOISE_SE = 3.0
"""Noisy runs: a window median may also lie this many of its standard errors from the steady median."""
WARMUP_MAX_FRACTION = 0.5


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one run's latencies (milliseconds)."""

    n: int
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    ci95_p50: tuple[float, float]
    ci95_p99: tuple[float, float]
    outliers: int
    outlier_policy: str = OUTLIER_POLICY

    def result_fields(self) -> dict[str, object]:
        """The :class:`~edgepack.device_bench.config.BenchResult` fields these statistics fill."""
        return {name: getattr(self, name) for name in (
            "p50", "p90", "p95", "p99", "mean", "std", "min", "max", "ci95_p50", "ci95_p99", "outliers", "outlier_policy")}


@dataclass(frozen=True)
class Warmup:
    """How many leading iterations :func:`detect_warmup` discards, and whether the run settled."""

    discarded: int
    settled: bool
    window: int


def _as_array(samples: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(samples, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no latency samples")
    if not np.all(np.isfinite(values)):
        raise ValueError("latency samples must be finite")
    return values


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    quantile: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``quantile`` of ``samples`` (vectorised, seeded)."""
    values = _as_array(samples)
    rng = np.random.default_rng(seed)
    n = values.size
    rows = max(1, BOOTSTRAP_CHUNK_ELEMENTS // n)
    estimates = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows):
        count = min(rows, resamples - start)
        draws = values[rng.integers(0, n, size=(count, n))]
        estimates[start : start + count] = np.quantile(draws, quantile, axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(estimates, [tail, 1.0 - tail])
    return float(low), float(high)


def outlier_count(samples: Sequence[float] | np.ndarray) -> int:
    """How many values lie above ``Q3 + 3 * IQR`` (flagged only; see :data:`OUTLIER_POLICY`)."""
    values = _as_array(samples)
    q1, q3 = np.quantile(values, [0.25, 0.75])
    return int(np.count_nonzero(values > q3 + OUTLIER_IQR_FACTOR * (q3 - q1)))


def summarize(
    samples: Sequence[float] | np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> LatencyStats:
    """Percentiles, moments, extremes, bootstrap CIs of p50/p99 and the outlier count of ``samples``."""
    values = _as_array(samples)
    p50, p90, p95, p99 = (float(q) for q in np.quantile(values, list(QUANTILES.values())))
    return LatencyStats(
        n=int(values.size),
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        mean=float(values.mean()),
        std=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        min=float(values.min()),
        max=float(values.max()),
        ci95_p50=bootstrap_ci(values, 0.50, resamples=resamples, seed=seed),
        ci95_p99=bootstrap_ci(values, 0.99, resamples=resamples, seed=seed + 1),
        outliers=outlier_count(values),
    )


def _window(n: int) -> int:
    """Rolling-median window: about 5 % of the run, between 5 and 50 iterations."""
    return int(min(50, max(5, n // 20)))


def detect_warmup(
    samples: Sequence[float] | np.ndarray,
    *,
    tolerance: float = WARMUP_TOLERANCE,
    max_fraction: float = WARMUP_MAX_FRACTION,
) -> Warmup:
    """Leading iterations to discard: until the rolling median settles near the steady-state median.

    The steady state is the median of the run's second half. A window of ``w`` iterations starting at
    ``s`` is *settled* when its median is within ``tolerance`` of it (or within 3 standard errors of a
    window median, estimated from the second half's IQR, when that is wider) and so are the next ``w``
    windows.
    The first settled window's median is already steady when fewer than half its values are slow, so
    the slow prefix ends about ``w // 2`` iterations after ``s``; that many more are discarded. At most
    ``max_fraction`` of the run is discarded; ``settled`` is False when the run never settled.
    """
    values = _as_array(samples)
    n = values.size
    window = _window(n)
    cap = int(n * max_fraction)
    if n < 2 * window:
        return Warmup(0, True, window)
    tail = values[n // 2 :]
    steady = float(np.median(tail))
    q1, q3 = np.quantile(tail, [0.25, 0.75])
    median_se = 1.2533 * (q3 - q1) / 1.349 / np.sqrt(window)  # normal-theory SE of a median, robust sigma
    span = min(n, cap + 2 * window)
    medians = np.median(np.lib.stride_tricks.sliding_window_view(values[:span], window), axis=1)
    ok = np.abs(medians - steady) <= max(tolerance * steady, WARMUP_NOISE_SE * median_se)
    # runs[s]: windows s .. s+window-1 are all within tolerance.
    runs = np.convolve(ok.astype(np.int64), np.ones(window, dtype=np.int64), mode="valid") == window
    starts = np.flatnonzero(runs)
    if starts.size == 0 or starts[0] > cap:
        return Warmup(cap, False, window)
    first = int(starts[0])
    discarded = 0 if first == 0 else min(cap, first + window // 2)
    return Warmup(discarded, True, window)
