"""``edgepack bench``: measure a bundle's artifacts with a runner.

:func:`bench_bundle` verifies the bundle, rebuilds each target's :class:`Artifact` record from the
manifest (:func:`artifact_from_manifest`), chooses the inputs its predictor takes (:func:`bench_inputs`)
and hands both to the runner named by the URI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.bundle.verify import open_bundle
from edgepack.bundle.writer import read_manifest
from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.runners.base import artifact_from_entry, runner_for_uri, spec_from_dict
from edgepack.errors import BundleError, EdgepackError, InputError
from edgepack.exporters.base import Artifact
from edgepack.models.source import TensorSpec

if TYPE_CHECKING:
    from edgepack.targets.registry import Registry

REMAPPED_IO_SETTING = "input_map"
"""Artifact setting of exporters whose tensors are renamed/permuted from the source's (TFLite): their
predictors take the *source's* inputs, so the bench feeds those."""


def _target_entry(manifest: Mapping[str, Any], bundle: Path, target: str) -> Mapping[str, Any]:
    targets = manifest.get("targets") or {}
    if target not in targets:
        known = ", ".join(sorted(targets)) or "none"
        raise InputError(f"{bundle}: no target '{target}' in this bundle", hint=f"targets: {known}")
    entry = targets[target]
    if not entry.get("artifact"):
        reason = entry.get("error") or entry.get("status") or "no artifact"
        raise InputError(f"{bundle}: target '{target}' has no artifact to bench ({reason})")
    return entry


def artifact_from_manifest(bundle: Path, target: str, manifest: Mapping[str, Any] | None = None) -> Artifact:
    """The :class:`Artifact` record of ``target`` in ``bundle``, with paths inside the bundle."""
    manifest = manifest if manifest is not None else read_manifest(bundle)
    entry = _target_entry(manifest, bundle, target)
    return artifact_from_entry(
        bundle,
        target,
        str(entry["profile"]["runtime"]),
        entry["artifact"],
        recipe=str(entry.get("recipe") or ""),
        toolchain=entry.get("toolchain") or {},
    )


def bench_inputs(manifest: Mapping[str, Any], artifact: Artifact, batch: int = 1) -> tuple[TensorSpec, ...]:
    """Specs of what ``artifact``'s predictor takes, at ``batch`` (symbolic dims set to it).

    A ``batch`` above 1 needs a symbolic first dim on every input: an artifact built for a static batch
    (e.g. a DLA engine, a TFLite model with a fixed batch of 1) is refused with one line rather than measured
    at a batch it was not built for.

    Predictors take the source's names and layout. Most artifacts keep them, so their own input specs
    are used; artifacts that rename or transpose their inputs (``settings["input_map"]``, TFLite) are fed
    the source's input specs from the manifest.
    """
    if REMAPPED_IO_SETTING in artifact.settings:
        specs = [spec_from_dict(s) for s in manifest.get("source", {}).get("inputs", [])]
        if not specs:
            raise InputError(f"target '{artifact.target_id}': the manifest has no source input specs to feed")
    else:
        specs = list(artifact.inputs)
    if batch > 1:
        fixed = [s for s in artifact.inputs if not s.shape or isinstance(s.shape[0], int)]
        if fixed:
            raise InputError(f"target '{artifact.target_id}': --batch {batch}: input '{fixed[0].name}' has a static "
                             f"shape {fixed[0].shape_str()}",
                             hint="bench it at --batch 1, or export with a dynamic batch (a target whose profile "
                                  "keeps dynamic shapes)")
    return tuple(s.with_static_shape(batch) for s in specs)


def bench_bundle(
    bundle: Path,
    target: str | None,
    runner_uri: str,
    config: BenchConfig,
    *,
    runner_options: Mapping[str, str] | None = None,
    progress: Callable[[str, str], None] = lambda target, stage: None,
    public_key: Path | None = None,
    registry: Registry | None = None,
) -> list[BenchResult]:
    """Measure ``target`` (every target with an artifact when ``None``) of ``bundle`` on ``runner_uri``.

    ``bundle`` is a directory or a ``.zip``; it is verified first (:class:`edgepack.errors.TamperedError` on
    any changed file, and on a missing or bad signature when ``public_key`` is given); a runner that cannot
    run an artifact raises one :class:`~edgepack.errors.BundleError` line instead of skipping it. ``registry``
    gives the device profiles runners read accelerator facts from (the shipped profiles when ``None``).
    """
    runner = runner_for_uri(runner_uri, registry=registry, **dict(runner_options or {}))  # a bad URI is refused before any I/O
    with open_bundle(bundle, public_key) as opened:
        manifest = opened.manifest
        if target is not None:
            names = [target]
        else:
            names = [name for name, entry in sorted((manifest.get("targets") or {}).items()) if entry.get("artifact")]
            if not names:
                raise InputError(f"{bundle}: no target in this bundle has an artifact")
        artifacts = [artifact_from_manifest(opened.root, name, manifest) for name in names]
        if config.batch > 1 and not runner.feeds_input_specs:
            raise InputError(f"--batch {config.batch}: the {runner.scheme} runner feeds each artifact its own "
                             "input shapes", hint="measure batches on the host or over ssh")
        specs = {a.target_id: bench_inputs(manifest, a, config.batch) for a in artifacts}  # refusals before any run
        results = []
        for artifact in artifacts:
            progress(artifact.target_id, f"measuring on {runner_uri}")
            try:
                results.append(runner.run(artifact, config, inputs=specs[artifact.target_id]))
            except EdgepackError:
                raise
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot load the artifact is one line
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                raise BundleError(f"{bundle}: target '{artifact.target_id}': {artifact.runtime} could not run "
                                  f"{artifact.path.name}: {type(exc).__name__}: {first}") from None
    return results
