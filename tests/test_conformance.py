"""Conformance: every registered exporter against every shipped recipe it accepts.

For each runtime (found through the ``edgepack.exporters`` entry points, so a plug-in runtime is covered the
moment it is registered) and each recipe its :meth:`~edgepack.exporters.base.Exporter.refusal` accepts, the
exporter converts the embedded digits model for the first shipped profile of that runtime, then:

- the artifact names a format the exporter declares, its files exist and sit in one directory;
- ``predictor`` gives either a host predictor whose outputs match the source within the recipe's own parity
  tolerance (:func:`edgepack.parity.compare`, as the pipeline judges it), or ``NotRunnable`` with a reason;
- formats the exporter declares in ``Capabilities.graph_formats`` give a non-empty op list in its vocabulary.

A runtime whose toolchain runs in its own venv (``Capabilities.isolated_env``) has it installed from the package
registry first, as ``edgepack toolchains install NAME`` does.

Recipes with torch-level passes (pruning, QAT, palettization) are left out: the pipeline applies those
before any exporter runs, so they are not part of an exporter's contract.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepack.compress.recipe import load_recipes
from edgepack.exporters.base import NotRunnable
from edgepack.exporters.registry import capabilities, exporter_classes, get_exporter
from edgepack.models.loaders import load_source
from edgepack.models.reference import reference_predictor
from edgepack.models.synthetic import domain_dataset_arrays, synthetic_calibration
from edgepack.parity import compare
from edgepack.targets.registry import load_registry

pytestmark = pytest.mark.usefixtures("isolated_toolchains")

PARITY_SAMPLES = 8
"""Held-out samples from the same domain-shaped generator as the calibration set (another seed), one per batch."""


def _cases() -> list[tuple[str, str]]:
    book = load_recipes()
    cases = []
    for runtime, cls in sorted(exporter_classes().items()):
        exporter = cls()
        for name in sorted(book.recipes):
            recipe = book.get(name)
            if not recipe.passes and exporter.refusal(recipe) is None:
                cases.append((runtime, name))
    return cases


CASES = _cases()


def test_every_registered_runtime_has_a_case_and_a_shipped_profile() -> None:
    registry = load_registry()
    runtimes = {profile.runtime for profile in registry}
    for runtime in exporter_classes():
        assert runtime in runtimes, f"no shipped profile uses runtime {runtime!r}"
        assert any(r == runtime for r, _ in CASES), f"runtime {runtime!r} accepts no shipped recipe"


@pytest.fixture(scope="module")
def digits():
    source = load_source("demo:digits")
    return source, synthetic_calibration(source.inputs)


@pytest.mark.parametrize(("runtime", "recipe_name"), CASES, ids=[f"{r}-{n}" for r, n in CASES])
def test_exporter_conforms(runtime: str, recipe_name: str, digits, tmp_path: Path, one_torch_thread) -> None:
    source, calib = digits
    profile = next(p for p in sorted(load_registry(), key=lambda p: p.id) if p.runtime == runtime)
    recipe = load_recipes().get(recipe_name)
    exporter = get_exporter(runtime)

    artifact = exporter.export(source, profile, recipe, calib, tmp_path / "work")

    assert artifact.format in exporter.artifact_formats
    assert artifact.path.exists() and all(f.exists() for f in artifact.files)  # path may be a directory (.mlpackage)
    assert all(f.resolve().is_relative_to(artifact.path.parent.resolve()) for f in artifact.files)
    assert artifact.bytes > 0 and len(artifact.sha256()) == 64

    predictor = exporter.predictor(artifact, source)
    if isinstance(predictor, NotRunnable):
        assert predictor.reason.strip(), "NotRunnable needs a reason the manifest can show"
    else:
        try:
            held_out = domain_dataset_arrays(source.inputs, PARITY_SAMPLES, seed=1)
            batches = [{n: a[i : i + 1] for n, a in held_out.items()} for i in range(PARITY_SAMPLES)]
            report = compare(reference_predictor(source), predictor, batches, recipe.parity)
            outputs = predictor(batches[0])
        finally:
            predictor.close()
        assert set(outputs) == {spec.name for spec in source.outputs}
        assert all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in outputs.values())
        assert report.passed, f"{runtime} {recipe_name}: {report.reason} ({report.summary()})"

    caps = capabilities(runtime)
    if caps is not None and artifact.format in caps.graph_formats:
        ops = exporter.graph_ops(artifact.path, artifact.format)
        assert ops, f"{runtime} read no ops from its own {artifact.format} artifact"
