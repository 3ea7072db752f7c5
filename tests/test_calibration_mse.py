"""MSE calibration: the range search on synthetic distributions, and the int8-mse recipe on real runtimes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgepack import api
from edgepack.compress.calibration import mse_range


def _quantization_mse(x: np.ndarray, low: float, high: float, levels: int = 255) -> float:
    step = (high - low) / levels
    q = np.clip(np.round((x - low) / step), 0, levels) * step + low
    return float(np.mean((q - x) ** 2))


@pytest.mark.parametrize("kind", ["relu-laplace", "laplace", "uniform"])
def test_mse_range_never_loses_to_minmax_and_wins_on_heavy_tails(kind):
    rng = np.random.default_rng(0)
    x = {"relu-laplace": np.maximum(rng.laplace(0, 1, 200_000), 0), "laplace": rng.laplace(0, 1, 200_000),
         "uniform": rng.uniform(-1, 1, 200_000)}[kind].astype(np.float32)
    hist, edges = np.histogram(np.abs(x), bins=2048)
    low, high = mse_range(hist, edges, float(x.min()), float(x.max()))
    minmax = _quantization_mse(x, float(min(x.min(), 0)), float(x.max()))
    chosen = _quantization_mse(x, low, high)
    assert chosen <= minmax * 1.001
    if kind == "uniform":
        assert high == pytest.approx(float(np.abs(x).max()), rel=1e-3)  # nothing to clip
    else:
        assert high < float(np.abs(x).max()) and chosen < 0.95 * minmax  # clips the tail, finer step
    if kind == "relu-laplace":
        assert low == 0.0


def _activation_scales(model_path) -> dict[str, float]:
    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1}


def test_int8_mse_recipe_tightens_activation_ranges_on_real_runtimes(tmp_path):
    targets = ["host-ort", "x86-openvino"]
    minmax = api.export("demo:digits", targets, out=tmp_path / "minmax", recipe_chain=["int8"], max_slowdown=1.0)
    mse = api.export("demo:digits", targets, out=tmp_path / "mse", recipe_chain=["int8-mse"], max_slowdown=1.0)
    for target in targets:
        entry = mse.manifest["targets"][target]
        assert entry["status"] == "ok" and entry["artifact"]["settings"]["calibration"] == "mse", entry["error"]
        assert entry["gate"]["drop"] <= 0.01
    before = _activation_scales(minmax.bundle / "artifacts/host-ort/model.onnx")
    after = _activation_scales(mse.bundle / "artifacts/host-ort/model.onnx")
    assert before.keys() == after.keys()
    assert all(after[k] <= before[k] * (1 + 1e-6) for k in before)
    assert sum(after[k] < before[k] * 0.99 for k in before) >= 3, (before, after)
