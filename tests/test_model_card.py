"""MODEL_CARD.md generated from a real bundle's manifest."""

from __future__ import annotations

import copy

import pytest

from edgepack import api
from edgepack.bundle.model_card import render_model_card


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, one_torch_thread) -> dict:
    # host-ort: measured on this host; jetson-orin: checked on an ORT proxy only, with a placement report.
    return api.export("demo:digits", ["host-ort", "jetson-orin"], out=tmp_path_factory.mktemp("b")).manifest


def test_card_carries_manifest_facts(manifest):
    card = render_model_card(manifest)
    source = manifest["source"]
    assert card.startswith("# Model card: digits-cnn\n")
    assert f"`{source['uri']}`" in card and source["sha256"] in card
    assert "| input `image` | float32 [batch, 1, 8, 8] NCHW; (x * 0.0625 - mean [0.0]) / std [1.0]" in card
    assert "| labels | 10: 0, 1, 2" in card
    assert f"at most {manifest['data']['max_drop']} absolute drop" in card
    for target, entry in manifest["targets"].items():
        gate, parity = entry["gate"], entry["parity"]
        assert f"| `{target}` | {entry['profile']['name']} | {entry['profile']['runtime']} | ok | {entry['artifact']['precision']} |" in card
        assert f"{entry['artifact']['bytes'] / 1024:.1f} KiB" in card
        assert f"| {gate['baseline']:.4f} | {gate['value']:.4f} | {gate['drop']:.4f} |" in card
        assert f"min cosine {parity['min_cosine']:.4f}" in card
        for name, version in entry["toolchain"].items():
            assert f"{name} {version}" in card
    host = manifest["targets"]["host-ort"]
    winner = next(a for a in host["attempts"] if a["recipe"] == host["recipe"] and a["status"] == "passed")
    latency = winner["latency_vs_fp32"]
    if latency is None:  # the fp32 fallback won: nothing to compare against
        assert "| `host-ort` | every op on the CPU (no accelerator op table) | not measured (" in card
    else:
        assert (f"| {latency['speedup']}x fp32 ({latency['candidate_ms']} vs {latency['baseline_ms']} ms wall per "
                "call, interleaved") in card
    assert "| not benchmarked (`edgepack bench`) |" in card  # no --bench: no absolute latency is claimed
    placement = manifest["targets"]["jetson-orin"]["placement"]
    for acc in placement["accelerators"]:
        assert f"{acc['accelerator']}: {acc['supported']}/{placement['total_ops']} ops" in card


def test_card_says_what_was_not_measured(manifest):
    card = render_model_card(manifest)
    section = card.split("## Not measurable here", 1)[1]
    runnable = manifest["targets"]["jetson-orin"]["runnable_here"]
    assert f"`jetson-orin`: the artifact did not run on its own runtime here ({runnable})" in section
    assert "`jetson-orin`: absolute latency, memory and energy on NVIDIA Jetson AGX Orin" in section
    assert "`host-ort`: the artifact did not run" not in section
    assert "| `jetson-orin` | gpu:" in card and "not measured (" in card  # no host latency for the proxy


def test_card_with_failed_target_and_determinism(manifest):
    broken = copy.deepcopy(manifest)
    entry = broken["targets"]["jetson-orin"]
    entry.update(status="failed", error="every recipe failed", artifact=None, gate=None, parity=None, placement=None,
                 attempts=[])
    card = render_model_card(broken)
    assert "| `jetson-orin` | NVIDIA Jetson AGX Orin | tensorrt | failed: every recipe failed | — |" in card
    assert "`jetson-orin`: no artifact (every recipe failed)." in card
    assert render_model_card(manifest) == render_model_card(copy.deepcopy(manifest))


def test_card_shows_the_drop_interval_and_the_cannot_resolve_note(manifest):
    host = manifest["targets"]["host-ort"]["gate"]
    low, high = host["drop_ci95"]
    card = render_model_card(manifest)
    assert f"pass (drop 95% CI [{low:.4f}, {high:.4f}], {host['samples']} samples)" in card
    small = copy.deepcopy(manifest)
    note = ("eval data has 50 samples: one changed prediction is a 2.0-point drop, more than half of --max-drop "
            "1.0 points; the gate cannot resolve its threshold (it needs at least 200 samples)")
    small["targets"]["host-ort"]["gate"].update(samples=50, resolvable=False, note=note)
    assert f"50 samples); {note} |" in render_model_card(small)
