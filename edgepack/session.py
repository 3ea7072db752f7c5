"""What one ``api.export`` call shares across its targets and recipe attempts, and where its time goes.

An :class:`ExportSession` is made by :func:`edgepack.api.export` and handed to every
:func:`edgepack.pipeline.run_target`; it lives exactly as long as that export (no globals, nothing kept on the
:class:`~edgepack.models.source.ModelSource`). It caches, keyed so that a cached value is the one the
target would have computed itself:

* the fp32 baseline artifact a compressed artifact is timed against: one per runtime and export-relevant
  profile settings (not one per target);
* the sensitivity ranking of a mixed-precision recipe: one per runtime, profile settings and recipe;
* the reference (fp32 source) outputs per input sample (parity inputs, gate data, the sensitivity subset of
  the gate data): computed once per export.

:class:`StageTimer` accumulates ``time.perf_counter`` seconds per stage for one target (the manifest's
``timings``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edgepack.exporters.base import Arrays, Predictor
from edgepack.targets.schema import TargetProfile

T = TypeVar("T")

STAGES = ("load", "calibrate", "convert", "parity", "gate", "latency_check", "sensitivity", "placement")
"""Per-target stages in the manifest's ``timings`` (plus ``total``, the target's wall time):

``load`` loading artifacts into their runtime (predictors) and the toolchain check; ``calibrate`` converter
runs of recipes that calibrate (static int8: calibration and conversion are one converter call);
``convert`` the other converter runs and compression passes; ``parity`` parity checks (and the divergence
report of a failed one); ``gate`` the accuracy/fidelity gate; ``latency_check`` the fp32 baseline (built or
shared) and the latency comparison; ``sensitivity`` the mixed-precision layer ranking; ``placement`` the
per-accelerator placement report."""

_NOT_EXPORT_SETTINGS = {"id", "name", "description", "family", "recipes", "latency_gate", "notes", "sources",
                        "peak_tops", "extends"}
"""Profile fields no exporter reads: two profiles that differ only in these get the same artifacts."""


class StageTimer:
    """Seconds per stage for one target; stages nest by subtraction (an inner stage is not counted twice)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._started = time.perf_counter()
        self._stack: list[list[float]] = []
        self.total: float | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Count the time spent in the block to ``name``, minus the time of stages nested in it."""
        started = time.perf_counter()
        self._stack.append([0.0])  # time of nested stages
        try:
            yield
        finally:
            nested = self._stack.pop()[0]
            elapsed = time.perf_counter() - started
            self.seconds[name] += elapsed - nested
            if self._stack:
                self._stack[-1][0] += elapsed

    def stop(self) -> None:
        self.total = time.perf_counter() - self._started

    def to_dict(self) -> dict[str, float]:
        total = self.total if self.total is not None else time.perf_counter() - self._started
        return {**{name: round(value, 3) for name, value in self.seconds.items()}, "total": round(total, 3)}


def export_settings_key(profile: TargetProfile) -> str:
    """The profile settings that can change what an exporter writes (the runtime included)."""
    return json.dumps(profile.model_dump(mode="json", exclude=_NOT_EXPORT_SETTINGS), sort_keys=True)


class _CachedReference(Predictor):
    """The reference predictor with each input sample's outputs computed once per export."""

    def __init__(self, reference: Predictor, keyer: Callable[[Arrays], Any]) -> None:
        self._reference = reference
        self._keyer = keyer
        self._outputs: dict[Any, Arrays] = {}
        self.proxy_for = getattr(reference, "proxy_for", None)

    def __call__(self, inputs: Arrays) -> Arrays:
        key = self._keyer(inputs)
        if key not in self._outputs:
            self._outputs[key] = self._reference(inputs)
        return self._outputs[key]

    def close(self) -> None:  # the reference belongs to the evaluation
        pass


def _arrays_key(inputs: Arrays) -> tuple:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(inputs):
        array = inputs[name]
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B") if array.flags.c_contiguous else array.tobytes())
    return (digest.hexdigest(),)


@dataclass
class ExportSession:
    """Caches shared by all targets of one export; see the module docstring."""

    baselines: dict[str, Any] = field(default_factory=dict)
    """export-settings key -> the shared fp32 baseline (``pipeline._Fp32Baseline``)."""
    sensitivity: dict[tuple[str, str], Any] = field(default_factory=dict)
    """(export-settings key, recipe JSON) -> the ranking, or the exception the ranking raised."""
    _references: dict[int, _CachedReference] = field(default_factory=dict)

    def baseline(self, profile: TargetProfile, build: Callable[[], T]) -> T:
        key = export_settings_key(profile)
        if key not in self.baselines:
            self.baselines[key] = build()
        return self.baselines[key]

    def reference(self, reference: Predictor) -> Predictor:
        """``reference`` with its outputs memoised per input (parity, the gate and sensitivity ranking feed it
        the same samples for every attempt of every target)."""
        cached = self._references.get(id(reference))
        if cached is None or cached._reference is not reference:
            cached = self._references[id(reference)] = _CachedReference(reference, _arrays_key)
        return cached

    def close(self) -> None:
        """Release the shared fp32 baselines' predictors."""
        for baseline in self.baselines.values():
            baseline.close()
        self.baselines.clear()
        self._references.clear()
