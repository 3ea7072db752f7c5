"""edgepack diff between real bundles, and the breaking-change rules on edited manifests."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepack import api
from edgepack.bundle.diff import diff_bundles, diff_manifests
from edgepack.bundle.hashing import canonical_json
from edgepack.bundle.writer import read_manifest
from edgepack.cli import app


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, one_torch_thread) -> tuple[Path, Path]:
    """The same model twice: int8 (the profiles' chain) to two Jetsons, then fp32 only to the Orin Nano
    (GPU only, so its I/O keeps the dynamic batch in both precisions; a DLA build is static).

    Jetson targets are judged on an ONNX Runtime proxy without a latency gate, so which recipe wins does
    not depend on this host's load (host-ort's int8 can lose to fp32 on a busy machine).
    """
    root = tmp_path_factory.mktemp("b")
    old = api.export("demo:digits", ["jetson-orin", "jetson-orin-nano"], out=root / "old").bundle
    new = api.export("demo:digits", ["jetson-orin-nano"], out=root / "new", recipe_chain=["fp32"]).bundle
    return old, new


def _changes(result, target=None, aspect=None):
    return {c.item: c for c in result.changes if (target is None or c.target == target) and (aspect is None or c.aspect == aspect)}


def test_same_bundle_has_no_changes(bundles):
    old, _ = bundles
    result = diff_bundles(old, old / "manifest.json")
    assert result.changes == [] and result.breaking == []
    done = CliRunner().invoke(app, ["diff", str(old), str(old)])
    assert done.exit_code == 0 and "no differences" in done.stdout


def test_recipe_change_between_real_exports(bundles):
    old, new = bundles
    om, nm = read_manifest(old), read_manifest(new)
    result = diff_bundles(old, new)
    assert om["targets"]["jetson-orin-nano"]["recipe"] == "int8" and nm["targets"]["jetson-orin-nano"]["recipe"] == "fp32"
    orin = {(c.aspect, c.item): c for c in result.changes if c.target == "jetson-orin-nano"}
    assert (orin[("recipe", "recipe")].old, orin[("recipe", "recipe")].new) == ("int8", "fp32")
    assert orin[("precision", "precision")].new == "fp32"
    size = orin[("size", "bytes")]
    assert (size.old, size.new) == (om["targets"]["jetson-orin-nano"]["artifact"]["bytes"],
                                    nm["targets"]["jetson-orin-nano"]["artifact"]["bytes"])
    assert size.describe().endswith("%)")
    assert ("parity", "min_cosine") in orin and ("artifact", "sha256") in orin
    # jetson-orin is gone from the new bundle: an app that shipped it loses its model.
    removed = [c for c in result.changes if c.target == "jetson-orin"]
    assert len(removed) == 1 and removed[0].breaking and removed[0].new == "removed"
    # fp32 vs int8 with the same I/O: only the removed target is breaking.
    assert [c.target for c in result.breaking] == ["jetson-orin"]
    done = CliRunner().invoke(app, ["diff", str(old), str(new), "--json"])
    assert done.exit_code == 1
    data = json.loads(done.stdout)["result"]
    assert data["breaking"] is True and any(c["aspect"] == "recipe" for c in data["changes"])
    assert CliRunner().invoke(app, ["diff", str(old), str(new), "--allow-breaking"]).exit_code == 0


def test_io_signature_changes_are_breaking(bundles):
    old, _ = bundles
    base = read_manifest(old)
    edited = copy.deepcopy(base)
    artifact = edited["targets"]["jetson-orin-nano"]["artifact"]
    artifact["inputs"][0]["shape"] = [1, 1, 8, 8]
    artifact["inputs"][0]["dtype"] = "uint8"
    artifact["inputs"][0]["quant"] = {"scale": 0.0625, "zero_point": 0}
    artifact["outputs"][0]["name"] = "scores"
    result = diff_manifests(base, edited)
    items = {c.item for c in result.breaking}
    assert {"artifact input 'image' shape", "artifact input 'image' dtype", "artifact input 'image' quant",
            "artifact outputs"} <= items
    assert all(c.target == "jetson-orin-nano" and c.aspect == "io" for c in result.breaking)

    relabelled = copy.deepcopy(base)
    relabelled["labels"] = list(reversed(base["labels"]))
    breaking = diff_manifests(base, relabelled).breaking
    assert [c.aspect for c in breaking] == ["labels"] + ["contract"] * len(base["targets"])
    assert {c.target for c in breaking[1:]} == set(base["targets"]) and {c.item for c in breaking[1:]} == {"labels"}


def test_toolchain_and_added_target_are_informational(bundles):
    old, _ = bundles
    base = read_manifest(old)
    edited = copy.deepcopy(base)
    edited["targets"]["jetson-orin-nano"]["toolchain"]["onnxruntime"] = "9.9.9"
    edited["targets"]["x86-openvino"] = copy.deepcopy(base["targets"]["jetson-orin-nano"])
    result = diff_manifests(base, edited)
    assert result.breaking == []
    tool = _changes(result, "jetson-orin-nano", "toolchain")["onnxruntime"]
    assert (tool.old, tool.new) == (base["targets"]["jetson-orin-nano"]["toolchain"]["onnxruntime"], "9.9.9")
    assert _changes(result, "x86-openvino")["target"].new == "added"


def test_latency_and_placement_changes_are_reported(bundles):
    old, _ = bundles
    base = read_manifest(old)
    edited = copy.deepcopy(base)
    entry = edited["targets"]["jetson-orin"]
    winner = next(a for a in entry["attempts"] if a["recipe"] == entry["recipe"])
    winner["latency_vs_fp32"] = {"candidate_ms": 1.5, "baseline_ms": 2.0, "speedup": 1.3333, "rounds": 7}
    dla = next(a for a in entry["placement"]["accelerators"] if a["accelerator"] == "dla")
    dla["supported"] += 1
    result = diff_manifests(base, edited)
    latency = _changes(result, "jetson-orin", "latency")
    assert (latency["host ms"].old, latency["host ms"].new) == (None, 1.5)
    placement = _changes(result, "jetson-orin", "placement")["dla ops"]
    total = entry["placement"]["total_ops"]
    assert placement.new == f"{dla['supported']}/{total}" and placement.old == f"{dla['supported'] - 1}/{total}"
    assert result.breaking == []


def test_gate_values_are_compared_only_under_the_same_metric(bundles):
    old, _ = bundles
    base = read_manifest(old)
    gate = base["targets"]["jetson-orin"]["gate"]
    same = copy.deepcopy(base)
    same["targets"]["jetson-orin"]["gate"].update(value=gate["value"] - 0.02, drop=(gate["drop"] or 0) + 0.02)
    accuracy = _changes(diff_manifests(base, same), "jetson-orin", "accuracy")
    label = f"{gate['metric']} ({gate['kind']})"
    assert set(accuracy) == {label, "drop vs fp32"} and accuracy[label].new == pytest.approx(gate["value"] - 0.02)
    # a labelled top-1 against a top-1 agreement with fp32: reported as a change of metric, no delta between them
    swapped = ("top1_agreement_vs_fp32", "fidelity") if gate["kind"] == "accuracy" else ("top1", "accuracy")
    other = copy.deepcopy(base)
    other["targets"]["jetson-orin"]["gate"].update(metric=swapped[0], kind=swapped[1], value=0.9722, drop=0.0)
    accuracy = _changes(diff_manifests(base, other), "jetson-orin", "accuracy")
    assert set(accuracy) == {"metric (values not comparable)"}
    change = accuracy["metric (values not comparable)"]
    assert change.old == f"{label} {gate['value']:.4f}" and change.new == f"{swapped[0]} ({swapped[1]}) 0.9722"


def test_cli_exit_codes_on_edited_bundle(bundles, tmp_path):
    old, _ = bundles
    copy_ = tmp_path / "edited.edgepack"
    shutil.copytree(old, copy_)
    manifest = read_manifest(copy_)
    manifest["targets"]["jetson-orin-nano"]["artifact"]["inputs"][0]["name"] = "pixels"
    (copy_ / "manifest.json").write_bytes(canonical_json(manifest))
    runner = CliRunner()
    done = runner.invoke(app, ["diff", str(old), str(copy_)])
    assert done.exit_code == 1
    assert "BREAKING io" in done.stdout and "artifact inputs: ['image'] → ['pixels']" in done.stdout
    assert runner.invoke(app, ["diff", str(old), str(copy_), "--allow-breaking"]).exit_code == 0
    done = runner.invoke(app, ["diff", str(old), str(tmp_path / "missing")])
    assert done.exit_code != 0 and "edgepack: error:" in done.stderr


def test_contract_changes_between_real_exports_are_breaking(bundles, tmp_path):
    """Labels, preprocessing (mean/std/scale/layout/baked) and postprocessing (NMS) per target, read from
    manifest.json files given directly (no bundle verification, so the edited manifest needs no re-hash)."""
    old, new = bundles
    target = "jetson-orin-nano"
    base = read_manifest(new)
    name = base["targets"][target]["artifact"]["inputs"][0]["name"]
    cases = {
        f"preprocess '{name}' mean": lambda e, m: e["artifact"]["inputs"][0]["preprocess"].update(mean=[0.5]),
        f"preprocess '{name}' std": lambda e, m: e["artifact"]["inputs"][0]["preprocess"].update(std=[0.25]),
        f"preprocess '{name}' scale": lambda e, m: e["artifact"]["inputs"][0]["preprocess"].update(scale=1 / 255),
        f"preprocess '{name}' baked": lambda e, m: e["artifact"]["inputs"][0]["preprocess"].update(baked=True),
        "postprocess": lambda e, m: e.update(postprocess={"nms": {"iou_threshold": 0.45, "max_detections": 100}}),
        "labels": lambda e, m: e.update(contract={"labels": [f"class {i}" for i in range(10)]}),
    }
    runner = CliRunner()
    for item, edit in cases.items():
        edited = copy.deepcopy(base)
        edit(edited["targets"][target], edited)
        folder = tmp_path / item.replace("'", "").replace(" ", "-")
        folder.mkdir()
        (folder / "manifest.json").write_bytes(canonical_json(edited))
        result = diff_bundles(new / "manifest.json", folder / "manifest.json")
        assert [(c.target, c.aspect, c.item) for c in result.breaking] == [(target, "contract", item)], item
        done = runner.invoke(app, ["diff", str(new / "manifest.json"), str(folder / "manifest.json")])
        assert done.exit_code == 1 and "BREAKING" in done.stdout, done.stdout
        assert runner.invoke(app, ["diff", str(new / "manifest.json"), str(folder / "manifest.json"),
                                   "--allow-breaking"]).exit_code == 0
    # The bundle-level label set reaches every target's contract; an unchanged pair of real exports has none.
    relabelled = copy.deepcopy(base)
    relabelled["labels"] = [f"digit {i}" for i in range(10)]
    (tmp_path / "relabelled").mkdir()
    (tmp_path / "relabelled" / "manifest.json").write_bytes(canonical_json(relabelled))
    result = diff_bundles(new / "manifest.json", tmp_path / "relabelled" / "manifest.json")
    assert {(c.target, c.aspect) for c in result.breaking} == {(None, "labels"), (target, "contract")}
    assert not [c for c in diff_bundles(old, new).changes if c.aspect == "contract"]
