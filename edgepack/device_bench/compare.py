"""Side-by-side latency of two host predictors, interleaved so that both see the same machine state.

Used by the gate to reject a compressed artifact that is slower than the fp32 artifact of the same
runtime. Absolute times differ between machines; only the ratio measured in one run is meaningful.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from edgepack.exporters.base import Arrays, Predictor


@dataclass(frozen=True)
class LatencyComparison:
    """Median per-inference milliseconds of a baseline and a candidate, and the candidate's speed-up."""

    baseline_ms: float
    candidate_ms: float
    rounds: int
    iterations_per_round: int

    @property
    def speedup(self) -> float:
        """baseline / candidate: above 1 means the candidate is faster."""
        return self.baseline_ms / self.candidate_ms if self.candidate_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, float | int]:
        return {
            "baseline_ms": round(self.baseline_ms, 4),
            "candidate_ms": round(self.candidate_ms, 4),
            "speedup": round(self.speedup, 4),
            "rounds": self.rounds,
            "iterations_per_round": self.iterations_per_round,
        }


def time_block(predictor: Predictor, inputs: Arrays, iterations: int) -> float:
    """Mean ms per call over ``iterations`` calls, after one untimed call: the first call after the other
    predictor ran pays for waking this runtime's threads and refilling caches, a cost an app running one
    model steadily never sees (timed, it charged resnet50 int8 on ONNX Runtime 1.51x instead of 1.73x)."""
    predictor(inputs)
    started = time.perf_counter()
    for _ in range(iterations):
        predictor(inputs)
    return (time.perf_counter() - started) * 1000.0 / iterations


def compare_latency(
    baseline: Predictor, candidate: Predictor, inputs: Arrays, *, budget_s: float = 2.0, rounds: int = 7, warmup: int = 3
) -> LatencyComparison:
    """Alternate blocks of baseline and candidate runs (order flipped each round); medians per block."""
    for _ in range(warmup):
        baseline(inputs)
        candidate(inputs)
    probe = max(time_block(baseline, inputs, 1), time_block(candidate, inputs, 1), 1e-3)
    iterations = max(1, int(budget_s * 1000.0 / (2 * rounds * probe)))
    base_times: list[float] = []
    cand_times: list[float] = []
    for index in range(rounds):
        pair = [(baseline, base_times), (candidate, cand_times)]
        for predictor, sink in pair if index % 2 == 0 else reversed(pair):
            sink.append(time_block(predictor, inputs, iterations))
    return LatencyComparison(statistics.median(base_times), statistics.median(cand_times), rounds, iterations)
