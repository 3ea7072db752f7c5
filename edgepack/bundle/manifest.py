"""The bundle manifest (schema version 1) built from an export run's results."""

from __future__ import annotations

from typing import Any

from edgepack.version import __version__
from edgepack.exporters.base import Artifact
from edgepack.models.source import ModelSource
from edgepack.package.accelerators import app_facts
from edgepack.pipeline import TargetResult

SCHEMA_VERSION = 1


def artifact_dir(target_id: str) -> str:
    return f"artifacts/{target_id}"


def _artifact_entry(artifact: Artifact) -> dict[str, Any]:
    return {**artifact.entry(f"{artifact_dir(artifact.target_id)}/"), "bytes": artifact.bytes, "sha256": artifact.sha256()}


def _divergence_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's short form of the divergence report (the per-layer list stays in reports/)."""
    if not report:
        return None
    first = report.get("first") or {}
    return {"recipe": report.get("recipe"), "summary": report.get("summary") or report.get("error"),
            "first_layer": first.get("node"), "op_type": first.get("op_type"),
            "max_rel_error": first.get("max_rel_error"), "cosine": first.get("cosine")}


def target_entry(result: TargetResult) -> dict[str, Any]:
    """The manifest's record for one target."""
    profile = result.profile
    winner = result.winner
    entry: dict[str, Any] = {
        "profile": {"id": profile.id, "name": profile.name, "runtime": profile.runtime, "format": profile.format,
                    "accelerators": app_facts(profile)},
        "status": result.status,
        "error": result.error,
        "recipe": winner.recipe if winner else None,
        "recipe_chain": list(profile.recipes),
        "attempts": [a.to_dict() for a in result.attempts],
        "toolchain": result.artifact.toolchain if result.artifact else {},
        "toolchain_pins": dict(profile.toolchain),
        "runnable_here": result.runnable,
        "artifact": _artifact_entry(result.artifact) if result.artifact else None,
        "parity": winner.parity.to_dict() if winner and winner.parity else None,
        "gate": winner.gate.to_dict() if winner and winner.gate else None,
        "sensitivity": result.sensitivity,
        "placement": result.placement,
        "divergence": _divergence_summary(result.divergence),
        "timings": result.timings,
        "reports": [f"reports/{profile.id}/attempts.json"]
        + ([f"reports/{profile.id}/placement.json"] if result.placement else [])
        + ([f"reports/{profile.id}/divergence.json"] if result.divergence else []),
    }
    return entry


def build_manifest(
    name: str,
    source: ModelSource,
    targets: dict[str, dict[str, Any]],
    *,
    calibration: str | None,
    evaluation: str,
    max_drop: float,
    max_slowdown: float,
) -> dict[str, Any]:
    """Everything an app team and a release reviewer need, without the file hashes (added on commit).

    ``targets`` maps each target id to its :func:`target_entry` (fresh or replayed from the export cache; a
    replayed entry keeps the ``timings`` of the export that made it, so a cache hit stays byte-identical);
    each target entry has its seconds per stage (:data:`edgepack.session.STAGES`). The whole export's
    ``load``/``total`` are on :class:`edgepack.api.ExportResult` (they would make every manifest unique)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "created_by": f"edgepack {__version__}",
        "source": source.describe(),
        "labels": source.labels,
        "data": {"calibration": calibration, "evaluation": evaluation, "max_drop": max_drop, "max_slowdown": max_slowdown},
        "targets": dict(targets),
        "status": "ok" if all(entry["status"] == "ok" for entry in targets.values()) else "partial",
    }
