"""Per-stage export timings in the manifest, and work shared across targets by the export session."""

from __future__ import annotations

import json

import pytest

from edgepack import api
from edgepack.exporters.ort.exporter import OrtExporter
from edgepack.session import STAGES, ExportSession, StageTimer
from edgepack.targets.registry import Registry, load_registry


def test_stage_timer_counts_nested_stages_once():
    timer = StageTimer()
    with timer.stage("gate"):
        with timer.stage("latency_check"):
            pass
    timer.stop()
    timings = timer.to_dict()
    assert set(timings) == {*STAGES, "total"}
    assert timings["total"] + 1e-3 >= sum(timings[s] for s in STAGES)


def test_manifest_has_per_stage_timings_that_add_up(tmp_path):
    result = api.export("demo:digits", ["host-ort", "x86-openvino"], out=tmp_path, cache=False)
    assert result.ok, {r.profile.id: r.error for r in result.results}
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    bundle = result.timings
    assert "timings" not in manifest  # wall-clock totals would make every manifest unique (cache hits are byte-identical)
    assert set(bundle) == {"load", "total"} and 0 <= bundle["load"] <= bundle["total"]
    stages_of_targets = 0.0
    for target in ("host-ort", "x86-openvino"):
        timings = manifest["targets"][target]["timings"]
        assert set(timings) == {*STAGES, "total"}
        assert all(value >= 0 for value in timings.values()), timings
        stages = sum(timings[s] for s in STAGES)
        assert timings["total"] + 0.01 >= stages, timings  # each stage counted once; the rest is bookkeeping
        assert stages >= 0.5 * timings["total"], timings  # and the stages cover most of the target's time
        assert timings["calibrate"] > 0 and timings["gate"] > 0 and timings["parity"] > 0, timings
        stages_of_targets += timings["total"]
    assert bundle["total"] + 0.01 >= bundle["load"] + stages_of_targets


@pytest.fixture
def counted_ort_exports(monkeypatch):
    """Every OrtExporter.export call as (target id, recipe name, precision)."""
    calls: list[tuple[str, str, str]] = []
    original = OrtExporter.export

    def export(self, source, profile, recipe, calib, workdir):
        calls.append((profile.id, recipe.name, recipe.precision))
        return original(self, source, profile, recipe, calib, workdir)

    monkeypatch.setattr(OrtExporter, "export", export)
    return calls


def test_fp32_baseline_is_built_once_per_runtime_per_export(tmp_path, counted_ort_exports):
    # two ONNX Runtime targets trying int8 (timed against fp32): one fp32 baseline for both
    base = load_registry().get("host-ort").model_copy(update={"recipes": ["int8-dynamic"]})
    twin = base.model_copy(update={"id": "host-ort-twin", "name": "Host CPU (twin)"})
    registry = Registry({"host-ort": base, "host-ort-twin": twin})
    result = api.export("demo:digits", ["host-ort", "host-ort-twin"], out=tmp_path, registry=registry, cache=False)
    assert [r.profile.id for r in result.results] == ["host-ort", "host-ort-twin"]  # passed or rejected: both timed
    fp32 = [call for call in counted_ort_exports if call[2] == "fp32"]
    assert len(fp32) == 1, counted_ort_exports
    assert [call[0] for call in counted_ort_exports if call[2] != "fp32"] == ["host-ort", "host-ort-twin"]
    for entry in result.manifest["targets"].values():  # both were timed against the shared baseline
        assert entry["attempts"][0]["latency_vs_fp32"] is not None


def test_session_keys_baselines_by_runtime_and_export_settings():
    registry = load_registry()
    session = ExportSession()
    built: list[str] = []

    class Baseline:
        def __init__(self, name: str) -> None:
            built.append(name)

        def close(self) -> None:
            pass

    ort = registry.get("host-ort")
    session.baseline(ort, lambda: Baseline("a"))
    session.baseline(ort.model_copy(update={"id": "other", "recipes": ["fp32"]}), lambda: Baseline("b"))
    session.baseline(ort.model_copy(update={"dynamic_shapes": False}), lambda: Baseline("c"))
    session.baseline(registry.get("x86-openvino"), lambda: Baseline("d"))
    assert built == ["a", "c", "d"]
    session.close()
    assert session.baselines == {}
