"""Latency statistics on synthetic distributions with known quantiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepack.device_bench import stats as stats_module
from edgepack.device_bench.config import BenchResult
from edgepack.device_bench.stats import OUTLIER_POLICY, bootstrap_ci, detect_warmup, outlier_count, summarize

N = 20_000


def test_uniform_quantiles_and_cis() -> None:
    samples = np.random.default_rng(1).uniform(0.0, 10.0, N)
    stats = summarize(samples)
    assert stats.n == N
    for got, quantile in ((stats.p50, 0.5), (stats.p90, 0.9), (stats.p95, 0.95), (stats.p99, 0.99)):
        assert got == pytest.approx(10.0 * quantile, abs=0.1)
    assert stats.mean == pytest.approx(5.0, abs=0.1)
    assert stats.std == pytest.approx(10.0 / math.sqrt(12.0), rel=0.02)
    assert 0.0 <= stats.min < 0.01 and 9.99 < stats.max <= 10.0
    assert stats.ci95_p50[0] < 5.0 < stats.ci95_p50[1]
    assert stats.ci95_p99[0] < 9.9 < stats.ci95_p99[1]
    assert stats.outliers == 0


def test_exponential_quantiles_and_cis() -> None:
    samples = np.random.default_rng(2).exponential(1.0, N)
    stats = summarize(samples)
    true_p50, true_p99 = math.log(2.0), math.log(100.0)
    assert stats.p50 == pytest.approx(true_p50, rel=0.03)
    assert stats.p90 == pytest.approx(math.log(10.0), rel=0.03)
    assert stats.p95 == pytest.approx(math.log(20.0), rel=0.03)
    assert stats.p99 == pytest.approx(true_p99, rel=0.05)
    assert stats.ci95_p50[0] < true_p50 < stats.ci95_p50[1]
    assert stats.ci95_p99[0] < true_p99 < stats.ci95_p99[1]
    assert stats.ci95_p99[1] - stats.ci95_p99[0] > stats.ci95_p50[1] - stats.ci95_p50[0]  # tails are less certain


def test_ci_coverage_and_determinism() -> None:
    rng = np.random.default_rng(3)
    hits = sum(
        low < math.log(2.0) < high
        for low, high in (bootstrap_ci(rng.exponential(1.0, 400), 0.5, seed=s) for s in range(40))
    )
    assert hits >= 33  # nominal 38 of 40
    samples = rng.exponential(1.0, 500)
    assert bootstrap_ci(samples, 0.99) == bootstrap_ci(samples, 0.99)
    assert bootstrap_ci(samples, 0.5, seed=1) != bootstrap_ci(samples, 0.5, seed=2)


def test_bootstrap_chunks_long_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = np.random.default_rng(4).normal(10.0, 1.0, 200_000)
    low, high = bootstrap_ci(samples, 0.5, resamples=200)
    # standard error of a normal median: 1.2533 * sigma / sqrt(n) = 0.0028, so the 95 % width is about 0.011
    assert low < float(np.median(samples)) < high and 0.005 < high - low < 0.02
    small = samples[:1000]
    whole = bootstrap_ci(small, 0.5)
    monkeypatch.setattr(stats_module, "BOOTSTRAP_CHUNK_ELEMENTS", 7_000)  # 7 resamples a chunk, same draws
    assert bootstrap_ci(small, 0.5) == whole


def test_outliers_flagged_not_dropped() -> None:
    samples = np.concatenate([np.random.default_rng(5).normal(10.0, 0.1, 995), [100.0] * 5])
    stats = summarize(samples)
    assert stats.outliers == 5 == outlier_count(samples)
    assert stats.n == 1000 and stats.max == 100.0
    assert stats.outlier_policy == OUTLIER_POLICY and "not dropped" in OUTLIER_POLICY


def _steady(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(5.0, 0.1, n)


def test_warmup_finds_a_planted_slow_prefix() -> None:
    samples = _steady(1000, 6)
    samples[:30] = np.random.default_rng(7).uniform(12.0, 20.0, 30)
    warmup = detect_warmup(samples)
    assert warmup.settled and 30 <= warmup.discarded <= 30 + warmup.window


def test_warmup_finds_a_decaying_prefix() -> None:
    samples = _steady(2000, 8)
    samples[:60] *= 1.0 + 4.0 * np.exp(-np.arange(60) / 12.0)  # 5x, decaying to within 5 % by ~iteration 54
    warmup = detect_warmup(samples)
    kept = samples[warmup.discarded :]
    assert warmup.settled and 30 <= warmup.discarded <= 60 + warmup.window
    assert np.median(kept[:20]) == pytest.approx(5.0, rel=0.05)


def test_warmup_none_and_capped() -> None:
    assert detect_warmup(_steady(1000, 9)).discarded == 0
    rng = np.random.default_rng(10)  # noisy but steady (CV 0.17): the tolerance widens with the noise
    assert sum(detect_warmup(5.0 + rng.exponential(1.0, 1000)).discarded == 0 for _ in range(20)) >= 17
    assert detect_warmup([1.0, 2.0, 3.0]).discarded == 0  # too short to judge
    drifting = np.linspace(1.0, 3.0, 1000)  # never settles: at most half is discarded
    warmup = detect_warmup(drifting)
    assert not warmup.settled and warmup.discarded == 500


def test_bad_samples_rejected() -> None:
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_result_requires_a_reason_for_every_missing_measurement() -> None:
    stats = summarize([1.0, 2.0, 3.0])
    fields = dict(
        runner="host", device="d", target="t", runtime="onnxruntime", precision="fp32", latencies_ms=(1.0, 2.0, 3.0),
        p50=stats.p50, p90=stats.p90, p95=stats.p95, p99=stats.p99, mean=stats.mean, std=stats.std, min=stats.min,
        max=stats.max, ci95_p50=stats.ci95_p50, ci95_p99=stats.ci95_p99, outliers=0, outlier_policy=OUTLIER_POLICY,
        warmup_mode="fixed", warmup_discarded=0, cold_start_ms=9.0, cold_start_reason=None, peak_mem_mb=1.0,
        peak_mem_reason=None, energy_mj_per_inference=None, energy_reason="no sensor", thermal=None,
        thermal_reason="no zones", sustained=None, sustained_reason="not requested", env={}, config={},
    )  # fmt: skip
    result = BenchResult(**fields)
    assert BenchResult.from_json(result.to_json()) == result
    with pytest.raises(ValueError, match="energy_mj_per_inference"):
        BenchResult(**(fields | {"energy_reason": None}))
