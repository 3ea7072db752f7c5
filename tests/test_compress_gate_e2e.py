"""Compression passes through the whole flow: the gate rejects what loses accuracy, the fallback ships."""

from __future__ import annotations

import onnx
import pytest

from edgepack import api

PRUNE90 = """
name = "prune90"
description = "90 % global magnitude pruning, no fine-tune: deliberately too aggressive."
precision = "fp32"
[[passes]]
name = "magnitude_prune"
options = { sparsity = 0.9, scope = "global" }
"""

STRUCTURED = """
name = "slim"
description = "Remove a quarter of the channels (keeps the classifier's input width)."
precision = "fp32"
[[passes]]
name = "structured_prune"
options = { ratio = 0.25, exclude = ["features.7"] }
"""


def test_overaggressive_pruning_is_rejected_and_fp32_ships(tmp_path):
    recipe = tmp_path / "prune90.toml"
    recipe.write_text(PRUNE90)
    result = api.export("demo:digits", ["host-ort"], out=tmp_path / "out", recipe_chain=[recipe, "fp32"])
    entry = result.manifest["targets"]["host-ort"]
    first, second = entry["attempts"]
    assert first["recipe"] == "prune90" and first["status"] == "rejected"
    # Parity compares the artifact with the pruned torch model (conversion is faithful) ...
    assert first["parity"]["passed"]
    # ... while the gate compares accuracy with the original fp32 model.
    assert first["reason"].startswith("gate: top1 dropped") and first["gate"]["drop"] > 0.1
    assert second["recipe"] == "fp32" and second["status"] == "passed"
    assert entry["recipe"] == "fp32" and result.ok


def test_structured_pruning_shrinks_the_exported_graph(tmp_path):
    recipe = tmp_path / "slim.toml"
    recipe.write_text(STRUCTURED)
    base = api.export("demo:digits", ["host-ort"], out=tmp_path / "a", recipe_chain=["fp32"])
    slim = api.export("demo:digits", ["host-ort"], out=tmp_path / "b", recipe_chain=[recipe], max_drop=1.0,
                      max_slowdown=1.0)
    slim_entry = slim.manifest["targets"]["host-ort"]
    assert slim_entry["status"] == "ok", slim_entry["error"]

    def weight_bytes(result):
        entry = result.manifest["targets"]["host-ort"]
        model = onnx.load(str(result.bundle / entry["artifact"]["path"]))
        return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)

    assert weight_bytes(slim) < 0.75 * weight_bytes(base)
    assert slim_entry["parity"]["passed"]


def test_unknown_pass_option_is_reported_on_the_attempt(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(PRUNE90.replace("scope", "scoop").replace('name = "prune90"', 'name = "bad"'))
    result = api.export("demo:digits", ["host-ort"], out=tmp_path / "out", recipe_chain=[recipe, "fp32"])
    first = result.manifest["targets"]["host-ort"]["attempts"][0]
    assert first["status"] == "error" and "scoop: unknown key" in first["reason"]


def test_unknown_recipe_name_is_a_clean_error(tmp_path):
    from edgepack.errors import ProfileError

    with pytest.raises(ProfileError, match="unknown recipe 'int9'"):
        api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["int9"])
    assert not tmp_path.joinpath("digits-cnn.edgepack").exists()
