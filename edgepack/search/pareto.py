"""Pareto front over (metric drop, latency, size) — all minimised — and the choice under constraints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Objectives = tuple[float, float, float]
"""(drop, latency ms, size bytes): smaller is better in each."""


def dominates(a: Objectives, b: Objectives) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(items: Sequence[T], objectives: Callable[[T], Objectives]) -> list[T]:
    """The items no other item dominates, in input order (equal points are all kept)."""
    points = [objectives(item) for item in items]
    return [item for item, p in zip(items, points) if not any(dominates(q, p) for q in points)]


def pareto_ranks(items: Sequence[T], objectives: Callable[[T], Objectives]) -> list[int]:
    """Non-dominated sorting: 0 for the front, 1 for the front of the rest, ..."""
    points = [objectives(item) for item in items]
    ranks = [-1] * len(items)
    remaining = set(range(len(items)))
    rank = 0
    while remaining:
        layer = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in layer:
            ranks[i] = rank
        remaining -= layer
        rank += 1
    return ranks


@dataclass(frozen=True)
class Constraints:
    """What a chosen recipe must satisfy: metric drop, and optionally latency (p50) and size budgets."""

    max_drop: float = 0.01
    latency_budget_ms: float | None = None
    size_budget_mb: float | None = None

    def violations(self, drop: float, latency_ms: float, size_bytes: int) -> list[str]:
        """Why a point does not satisfy the constraints (empty when it does)."""
        problems = []
        if drop > self.max_drop + 1e-12:
            problems.append(f"drop {drop:.4f} > {self.max_drop:.4f}")
        if self.latency_budget_ms is not None and latency_ms > self.latency_budget_ms:
            problems.append(f"p50 {latency_ms:.3f} ms > {self.latency_budget_ms:g} ms")
        if self.size_budget_mb is not None and size_bytes > self.size_budget_mb * 1e6:
            problems.append(f"size {size_bytes / 1e6:.3f} MB > {self.size_budget_mb:g} MB")
        return problems


def choose(
    items: Sequence[T], objectives: Callable[[T], Objectives], key: Callable[[T], str], constraints: Constraints,
    tie_tolerance: float = 0.05,
) -> T | None:
    """The fastest item satisfying ``constraints``; items within ``tie_tolerance`` of the fastest latency count
    as equally fast (timing noise) and are ordered by drop, then size, then latency, then ``key`` — so reruns
    agree, and the choice never trades accuracy for a speed-up smaller than the timing noise."""
    feasible = [item for item in items if not constraints.violations(*objectives(item))]
    if not feasible:
        return None
    fastest = min(objectives(item)[1] for item in feasible)
    tied = [item for item in feasible if objectives(item)[1] <= fastest * (1 + tie_tolerance)]
    # latency before the key: the chosen item is never dominated by another feasible one
    return min(tied, key=lambda item: (objectives(item)[0], objectives(item)[2], objectives(item)[1], key(item)))
