"""A gate that can resolve its threshold: sample counts, the drop's interval, the 'cannot resolve' note and
the fidelity metric that fits each output (project issue 16, item 5)."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import api
from edgepack.bundle.model_card import render_model_card
from edgepack.compress.gate import (
    FIDELITY_MAX_SAMPLES,
    FIDELITY_MIN_SAMPLES,
    Gate,
    fidelity_metric,
    fidelity_samples,
    iou_per_sample,
    paired_difference_interval,
    resolves,
    square_and_add_interval,
    step_agreement_per_sample,
    wilson_interval,
)
from edgepack.data.dataset import Dataset
from edgepack.exporters.base import CallablePredictor
from edgepack.models.source import ModelSource, TensorSpec


def _identity(name: str = "y") -> CallablePredictor:
    return CallablePredictor(lambda x: {name: x["x"]})


def _gate_on(outputs: np.ndarray, labels: np.ndarray | None = None, max_drop: float = 0.01, **kw) -> Gate:
    """A gate whose data *are* the reference outputs: the identity predictor is the fp32 model."""
    return Gate(Dataset({"x": outputs}, labels, "hand-made"), "y", max_drop, **kw)


def _flip_top1(logits: np.ndarray, rows: list[int]) -> np.ndarray:
    """``logits`` with the top-1 class of ``rows`` moved to another class."""
    out = logits.copy()
    for row in rows:
        out[row, (int(np.argmax(out[row])) + 1) % out.shape[1]] = out[row].max() + 1.0
    return out


def _candidate(reference: np.ndarray, changed: np.ndarray) -> CallablePredictor:
    """Returns ``changed[i]`` for the sample equal to ``reference[i]``."""
    def run(x):
        row = int(np.flatnonzero((reference == x["x"]).reshape(len(reference), -1).all(axis=1))[0])
        return {"y": changed[row : row + 1]}
    return CallablePredictor(run)


# --- the sample-count rule ------------------------------------------------------------------------------------

def test_fidelity_sample_rule():
    assert fidelity_samples(0.01) == 200
    assert fidelity_samples(0.02) == 100
    assert fidelity_samples(0.05) == 40
    assert fidelity_samples(0.5) == FIDELITY_MIN_SAMPLES == 32
    assert fidelity_samples(0.005) == fidelity_samples(0.0001) == FIDELITY_MAX_SAMPLES == 256
    assert fidelity_samples(0.0) == FIDELITY_MAX_SAMPLES
    for max_drop in (0.01, 0.02, 0.03, 0.05, 0.1):
        n = fidelity_samples(max_drop)
        assert n >= 2 / max_drop - 1e-9 and resolves(n, max_drop)
    assert not resolves(256, 0.005) and not resolves(50, 0.01) and resolves(200, 0.01)


def test_synthetic_fidelity_set_has_enough_samples_and_parity_keeps_its_own():
    source = ModelSource(kind="torch", uri="mem", name="m", sha256="0" * 64,
                         inputs=[TensorSpec("x", ("batch", 4), "float32")], outputs=[TensorSpec("y", ("batch", 4), "float32")],
                         torch_module=object())
    evaluation = api._evaluation(source, None, None, 0.01, 0.05)
    assert len(evaluation.gate.data) == 200 and evaluation.gate.data.labels is None
    assert len(evaluation.parity_inputs) == api.SYNTHETIC_SAMPLES
    calib = Dataset({"x": np.arange(120 * 4, dtype=np.float32).reshape(120, 4)}, None, "calib.npz")
    evaluation = api._evaluation(source, calib, None, 0.02, 0.05)
    assert len(evaluation.gate.data) == 100 and evaluation.gate.data.origin == "calib.npz"
    np.testing.assert_array_equal(evaluation.gate.data.inputs["x"], calib.inputs["x"][20:])  # the tail
    assert len(evaluation.parity_inputs) == 30
    mixed = api._evaluation(source, calib, None, 0.01, 0.05).gate.data
    assert len(mixed) == 200 and mixed.origin == "calib.npz (120) + synthetic, domain-shaped (80)"
    np.testing.assert_array_equal(mixed.inputs["x"][:120], calib.inputs["x"])


# --- the interval ----------------------------------------------------------------------------------------------

def test_interval_contains_the_drop_and_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 200, 1000):
        logits = rng.standard_normal((n, 10)).astype(np.float32)
        changed = _flip_top1(logits, list(range(0, n, 50)))  # 2 % of the predictions change
        result = _gate_on(logits).evaluate(_identity(), _candidate(logits, changed))
        assert result.metric == "top1_agreement_vs_fp32" and result.samples == n
        low, high = result.drop_ci95
        assert low <= result.drop <= high and result.drop == pytest.approx(0.02)
        widths.append(high - low)
        assert result.to_dict()["drop_ci95"] == [low, high]
    assert widths[0] > widths[1] > widths[2]


def test_wilson_and_newcombe_intervals():
    low, high = wilson_interval(0, 200)
    assert low == 0.0 and high == pytest.approx(3.8415 / (200 + 3.8415), rel=1e-3)
    low, high = wilson_interval(10, 100)  # textbook: 0.0552 .. 0.1744
    assert low == pytest.approx(0.0552, abs=1e-3) and high == pytest.approx(0.1744, abs=1e-3)
    # Newcombe (1998a), method 10 for independent samples: 56/70 - 48/80 = 0.2, CI 0.0524 .. 0.3339
    low, high = square_and_add_interval(56, 70, 48, 80)
    assert low == pytest.approx(0.0524, abs=1e-4) and high == pytest.approx(0.3339, abs=1e-4)
    # paired: a=12 both right, b=9 only the first, c=2 only the second, d=21 neither
    first = np.array([1] * 12 + [1] * 9 + [0] * 2 + [0] * 21, bool)
    second = np.array([1] * 12 + [0] * 9 + [1] * 2 + [0] * 21, bool)
    low, high = paired_difference_interval(first, second)
    assert 0.0 < low < 7 / 44 < high < 0.35
    assert paired_difference_interval(second, first) == pytest.approx((-high, -low))
    # positively correlated outcomes give a narrower interval than independent ones with the same rates
    independent = square_and_add_interval(21, 44, 14, 44)
    assert high - low < independent[1] - independent[0]


def test_pass_fail_is_on_the_point_estimate():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((200, 10)).astype(np.float32)
    one_flip = _gate_on(logits).evaluate(_identity(), _candidate(logits, _flip_top1(logits, [3])))
    assert one_flip.passed and one_flip.drop == pytest.approx(0.005) and one_flip.drop_ci95[1] > 0.01
    assert one_flip.resolvable and one_flip.note is None
    three = _gate_on(logits).evaluate(_identity(), _candidate(logits, _flip_top1(logits, [3, 4, 5])))
    assert not three.passed and "dropped 0.0150 > max 0.0100" in three.reason


# --- the 'cannot resolve' note ---------------------------------------------------------------------------------

def test_small_labelled_eval_set_gets_a_note():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((50, 10)).astype(np.float32)
    labels = np.argmax(logits, axis=1)
    result = _gate_on(logits, labels).evaluate(_identity(), _identity())
    assert result.kind == "accuracy" and result.metric == "top1" and result.samples == 50
    assert result.passed and not result.resolvable
    assert result.note == ("eval data has 50 samples: one changed prediction is a 2.0-point drop, more than half of "
                           "--max-drop 1.0 points; the gate cannot resolve its threshold (it needs at least 200 samples)")
    assert result.to_dict()["note"] == result.note and result.drop_ci95[0] <= 0.0 <= result.drop_ci95[1]


def test_large_labelled_eval_set_has_no_note():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((400, 10)).astype(np.float32)
    labels = np.argmax(logits, axis=1)
    changed = _flip_top1(logits, [0, 1])
    result = _gate_on(logits, labels).evaluate(_identity(), _candidate(logits, changed))
    assert result.resolvable and result.note is None and result.passed
    assert result.drop == pytest.approx(0.005)
    low, high = result.drop_ci95
    assert low <= 0.005 <= high and low < 0.005 < high


def test_user_metric_has_no_interval():
    gate = Gate(Dataset({"x": np.zeros((4, 2), np.float32)}), "y", scorer=lambda p: 0.9, scorer_name="f:m")
    result = gate.evaluate(_identity(), _identity())
    assert result.drop_ci95 is None and result.resolvable is None and result.note is None


# --- fidelity metrics by output shape ----------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "name", "metric"), [
    ((8, 10), "logits", "top1_agreement_vs_fp32"),
    ((8, 25, 37), "logits", "step_agreement_vs_fp32"),
    ((8, 1, 16, 16), "maps", "iou_vs_fp32"),
    ((8, 16, 16, 1), "maps", "iou_vs_fp32"),
    ((8, 64, 4, 4), "features", "cosine_vs_fp32"),
    ((8, 1), "score", "cosine_vs_fp32"),
    ((8, 384), "pooler_output", "cosine_vs_fp32"),
    ((8, 12, 384), "last_hidden_state", "cosine_vs_fp32"),
])
def test_fidelity_metric_fits_the_output(shape, name, metric):
    assert fidelity_metric(np.zeros(shape, np.float32), name) == metric


def test_sequence_step_agreement_value():
    ref = np.zeros((2, 4, 3), np.float32)
    ref[0, :, 0] = 1.0  # sample 0 predicts class 0 at every step, sample 1 class 1
    ref[1, :, 1] = 1.0
    got = ref.copy()
    got[0, 1, 2] = 5.0  # sample 0: one of 4 steps changes
    np.testing.assert_allclose(step_agreement_per_sample(ref, got), [0.75, 1.0])
    result = _gate_on(ref).evaluate(_identity(), _candidate(ref, got))
    assert result.kind == "fidelity" and result.metric == "step_agreement_vs_fp32"
    assert result.value == pytest.approx(0.875) and result.drop == pytest.approx(0.125)
    assert result.drop_ci95[0] <= 0.125 <= result.drop_ci95[1]


def test_dense_map_iou_value():
    ref = np.zeros((2, 1, 4, 4), np.float32)
    ref[0, 0, :2, :2] = 0.9  # 4 foreground pixels (probabilities: threshold 0.5)
    got = ref.copy()
    got[0, 0, 0, 0] = 0.2  # one lost ...
    got[0, 0, 3, 3] = 0.7  # ... one added: IoU 3/5; sample 1 is empty in both: IoU 1
    np.testing.assert_allclose(iou_per_sample(ref, got), [0.6, 1.0])
    result = _gate_on(ref).evaluate(_identity(), _candidate(ref, got))
    assert result.metric == "iou_vs_fp32" and result.value == pytest.approx(0.8)
    nhwc = _gate_on(ref.transpose(0, 2, 3, 1)).evaluate(_identity(), _candidate(ref.transpose(0, 2, 3, 1), got.transpose(0, 2, 3, 1)))
    assert nhwc.metric == "iou_vs_fp32" and nhwc.value == pytest.approx(0.8)
    # logit maps (outside [0, 1]) are thresholded at each fp32 map's mean
    logits = np.array([[[[-4.0, -4.0], [4.0, 4.0]]]], np.float32)
    np.testing.assert_allclose(iou_per_sample(logits, logits + 0.5), [1.0])
    np.testing.assert_allclose(iou_per_sample(logits, logits[..., ::-1, :]), [0.0])


def test_class_logits_top1_agreement_value_and_metric_override():
    ref = np.eye(4, dtype=np.float32)
    got = ref.copy()
    got[0] = [0, 2, 0, 0]  # one of 4 predictions changes
    result = _gate_on(ref).evaluate(_identity(), _candidate(ref, got))
    assert result.metric == "top1_agreement_vs_fp32" and result.value == pytest.approx(0.75)
    cosine = _gate_on(ref, metric="cosine").evaluate(_identity(), _candidate(ref, got))
    assert cosine.metric == "cosine_vs_fp32" and cosine.value == pytest.approx(0.75)


# --- end to end --------------------------------------------------------------------------------------------------

def test_demo_digits_gate_resolves_and_ships_int8(tmp_path, one_torch_thread):
    # max_slowdown=1.0: host timing on a shared machine is not what this test is about
    result = api.export("demo:digits", ["host-ort"], out=tmp_path, cache=False, max_slowdown=1.0)
    entry = result.manifest["targets"]["host-ort"]
    gate, max_drop = entry["gate"], result.manifest["data"]["max_drop"]
    assert entry["status"] == "ok" and entry["artifact"]["precision"] == "int8", entry["attempts"]
    assert gate["samples"] >= 2 / max_drop and gate["resolvable"] is True and gate["note"] is None
    low, high = gate["drop_ci95"]
    assert low <= gate["drop"] <= high and high - low < 0.05
    assert entry["parity"]["samples"] == api.PARITY_SAMPLES
    card = render_model_card(result.manifest)
    assert f"drop 95% CI [{low:.4f}, {high:.4f}], {gate['samples']} samples" in card


def test_a_plain_fp32_conversion_is_judged_on_the_parity_inputs_not_the_fidelity_set(tmp_path, tiny_cnn_file):
    from edgepack import api

    result = api.export(f"{tiny_cnn_file}:build", ["host-ort"], out=tmp_path, recipe_chain=["fp32"], cache=False)
    gate = result.manifest["targets"]["host-ort"]["gate"]
    assert gate["samples"] == api.SYNTHETIC_SAMPLES and gate["note"].startswith("fp32 conversion: fidelity measured on the parity")
    assert result.manifest["data"]["evaluation"].startswith("fidelity on synthetic, domain-shaped")
