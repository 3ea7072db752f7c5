"""Device facts the generated code needs, read from the target profile: which LiteRT delegate the Kotlin
runner creates for an accelerator (``[accelerators.<id>.litert_delegate]``), and which Core ML compute units
select it (``coreml_compute_units``). An accelerator without those facts runs on the CPU path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

from edgepack.targets.schema import LiteRTDelegate, TargetProfile

AcceleratorFacts = Union[TargetProfile, Mapping[str, Any]]
"""A target profile, or the ``accelerators`` a bundle manifest's target records (:func:`app_facts`)."""


@dataclass(frozen=True)
class KotlinDelegate:
    """How the generated Kotlin runner creates one LiteRT delegate (Interpreter API)."""

    name: str
    """The profile's accelerator id."""
    imports: tuple[str, ...]
    create: str
    """A Kotlin expression of type ``org.tensorflow.lite.Delegate``."""
    gradle: tuple[str, ...] = ()
    """Extra Maven artifacts (``group:name``) beside ``com.google.ai.edge.litert:litert``; pinned to the
    same version."""


def app_facts(profile: TargetProfile) -> dict[str, dict[str, Any]]:
    """The accelerator facts generated apps need (``litert_delegate``, ``coreml_compute_units``), per accelerator
    that has any: the manifest records them, so a bundle packages the same for a shipped or a user profile."""
    facts: dict[str, dict[str, Any]] = {}
    for name, acc in profile.accelerators.items():
        one = acc.model_dump(mode="json", include={"litert_delegate", "coreml_compute_units"}, exclude_none=True)
        if one:
            facts[name] = one
    return facts


def _facts(source: AcceleratorFacts, accelerator: str) -> Mapping[str, Any]:
    if isinstance(source, TargetProfile):
        return app_facts(source).get(accelerator, {})
    return source.get(accelerator) or {}


def kotlin_delegate(source: AcceleratorFacts, accelerator: str) -> KotlinDelegate | None:
    """The Kotlin construction of ``accelerator``'s LiteRT delegate, or ``None`` when ``source`` gives none (no
    such accelerator, no ``litert_delegate``, or a delegate that ships outside Google Maven, such as Qualcomm's
    QNN delegate: no ``kotlin_create``)."""
    recorded = _facts(source, accelerator).get("litert_delegate")
    facts = LiteRTDelegate.model_validate(recorded) if recorded else None
    if facts is None or facts.kotlin_create is None:
        return None
    return KotlinDelegate(accelerator, tuple(facts.kotlin_imports), facts.kotlin_create, tuple(facts.maven))


def coreml_compute_units(source: AcceleratorFacts, accelerator: str) -> str | None:
    """The Swift ``MLComputeUnits`` literal (``.cpuAndNeuralEngine``) that selects ``accelerator``, or ``None``
    when ``source`` gives none."""
    units = _facts(source, accelerator).get("coreml_compute_units")
    return f".{units}" if units is not None else None


FULL_COVERAGE = 0.0
"""An accelerator is recommended only when the placement report leaves no op on the CPU: a partly
delegated graph pays a copy at every boundary and is often slower than XNNPACK alone."""


def recommended_accelerator(placement: Mapping[str, Any] | None) -> str | None:
    """The first non-CPU accelerator of the placement report that runs every op, else ``None`` (CPU)."""
    if not placement:
        return None
    for entry in placement.get("accelerators", ()):
        if entry.get("kind") == "cpu":
            continue
        if entry.get("fallback_fraction") == FULL_COVERAGE and entry.get("supported", 0) > 0:
            return str(entry["accelerator"])
    return None
