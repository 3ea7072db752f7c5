"""k-means palettization, Huffman size estimates and the palettization report."""

from __future__ import annotations

import torch

import copy

import numpy as np
import pytest
from torch import nn

from edgepack.compress.cluster import (
    LUT_ENTRY_BYTES,
    Palettize,
    assign,
    huffman_code_lengths,
    huffman_size_estimate,
    kmeans_1d,
    palettization_report,
    palettize,
)
from edgepack.errors import InputError, ProfileError
from edgepack.models.demo_digits import digits_splits, load_digits_cnn


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return load_digits_cnn()


@pytest.fixture(scope="module")
def eval_split() -> tuple[np.ndarray, np.ndarray]:
    return digits_splits()["eval"]


def top1(module: nn.Module, eval_split) -> float:
    images, labels = eval_split
    with torch.no_grad():
        return float((module.eval()(torch.from_numpy(images)).argmax(dim=1).numpy() == labels).mean())


# -- k-means -----------------------------------------------------------------------------------------


def test_kmeans_recovers_planted_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([-1.0, -0.2, 0.3, 2.0])
    values = rng.choice(centers, 4000) + rng.normal(0, 0.01, 4000)
    np.testing.assert_allclose(kmeans_1d(values, 4), centers, atol=2e-3)


def test_kmeans_exact_when_few_distinct_values() -> None:
    assert kmeans_1d(np.array([3.0, 1.0, 3.0, 2.0]), 4).tolist() == [1.0, 2.0, 3.0]


def test_kmeans_quality_matches_sklearn_and_is_deterministic() -> None:
    from sklearn.cluster import KMeans

    values = np.random.default_rng(0).standard_normal(5000)
    centroids = kmeans_1d(values, 16, seed=3)
    ours = float(((values - centroids[assign(values, centroids)]) ** 2).sum())
    reference = KMeans(16, n_init=4, random_state=0).fit(values[:, None]).inertia_
    assert ours <= 1.01 * reference
    assert np.array_equal(centroids, kmeans_1d(values, 16, seed=3))


# -- palettize ---------------------------------------------------------------------------------------


def test_palettize_4bit_digits(model, eval_split) -> None:
    state = copy.deepcopy(model.state_dict())
    clustered = palettize(model, bits=4)
    report = palettization_report(clustered)
    assert set(report["layers"]) == {"features.0", "features.3", "features.7", "classifier"}
    for name, layer in report["layers"].items():
        weight = clustered.get_submodule(name).weight
        assert layer["unique"] == len(torch.unique(weight)) <= 16, name
        assert layer["palettized"]
        # Huffman-coded indices never cost more than 4 of fp32's 32 bits, plus the LUT
        assert layer["estimated_bytes"] <= layer["fp32_bytes"] * 4 / 32 + 16 * LUT_ENTRY_BYTES
    assert report["ratio"] < 0.15
    assert top1(clustered, eval_split) >= top1(model, eval_split) - 0.03
    for key, value in model.state_dict().items():  # input left as it was
        assert torch.equal(value, state[key]), key
    assert torch.equal(clustered.features[1].running_mean, model.features[1].running_mean)  # only weights change
    assert torch.equal(clustered.classifier.bias, model.classifier.bias)


def test_palettize_is_deterministic(model) -> None:
    first, second = palettize(model, bits=3, seed=7), palettize(model, bits=3, seed=7)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_per_grouped_channel_luts(model) -> None:
    clustered = palettize(model, bits=2, granularity="per_grouped_channel", group_size=8)
    weight = clustered.features[7].weight
    for start in range(0, weight.shape[0], 8):
        assert len(torch.unique(weight[start : start + 8])) <= 4
    assert len(torch.unique(weight)) > 4  # 8 LUTs, not one
    report = palettization_report(clustered, group_size=8)
    assert report["layers"]["features.7"]["luts"] == 8
    assert all(layer["max_unique_per_lut"] <= 4 for layer in report["layers"].values())
    # a LUT per 8 channels fits the weights more closely than one LUT per tensor
    per_tensor = palettize(model, bits=2)
    for name in report["layers"]:
        original = model.get_submodule(name).weight
        grouped_error = (clustered.get_submodule(name).weight - original).pow(2).sum()
        tensor_error = (per_tensor.get_submodule(name).weight - original).pow(2).sum()
        assert grouped_error < tensor_error, name


def test_zeros_from_pruning_survive_palettization(model) -> None:
    from edgepack.compress.prune import magnitude_prune, sparsity_report

    pruned = magnitude_prune(model, sparsity=0.6)
    clustered = palettize(pruned, bits=2)
    before, after = sparsity_report(pruned)["layers"], sparsity_report(clustered)["layers"]
    for name, layer in palettization_report(clustered)["layers"].items():
        assert layer["unique"] <= 4, name
        assert after[name]["zeros"] == before[name]["zeros"], name  # zero is one of the 4 values


def test_exclude_and_module_types(model) -> None:
    clustered = palettize(model, bits=2, exclude=["features.0"], module_types=["Conv"])
    assert torch.equal(clustered.features[0].weight, model.features[0].weight)
    assert torch.equal(clustered.classifier.weight, model.classifier.weight)
    assert len(torch.unique(clustered.features[3].weight)) <= 4


def test_report_of_an_unclustered_model(model) -> None:
    report = palettization_report(model)
    assert not report["layers"]["features.7"]["palettized"]
    assert report["estimated_bytes"] == report["fp32_bytes"] and report["ratio"] == 1.0


# -- Huffman -----------------------------------------------------------------------------------------


def test_huffman_code_lengths_textbook_example() -> None:
    lengths = huffman_code_lengths([5, 9, 12, 13, 16, 45])
    assert lengths.tolist() == [4, 4, 3, 3, 3, 1]
    assert huffman_code_lengths([0, 7, 0]).tolist() == [0, 1, 0]
    assert sum(2.0**-l for l in huffman_code_lengths([3, 1, 4, 1, 5, 9, 2, 6]) if l) == 1.0  # Kraft: complete code


def test_huffman_size_estimate() -> None:
    uniform = np.arange(16 * 100) % 16
    assert huffman_size_estimate(uniform, 4, 16) == len(uniform) * 4 // 8 + 16 * LUT_ENTRY_BYTES
    skewed = np.zeros(1000, dtype=np.int64)
    skewed[:10] = np.arange(1, 11)
    # 990 zeros cost 1 bit each; 10 rare symbols cost more, far below 4 bits per index overall
    size = huffman_size_estimate(skewed, 4, 16)
    assert size - 16 * LUT_ENTRY_BYTES < 1000 * 4 / 8 / 2
    with pytest.raises(InputError):
        huffman_size_estimate(np.array([0, 16]), 4, 16)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"bits": 1}, "bits"),
        ({"bits": 9}, "bits"),
        ({"bits": 4, "granularity": "per_row"}, "granularity"),
        ({"bits": 4, "group_size": 8}, "group_size"),
        ({"bits": 4, "granularity": "per_grouped_channel", "group_size": 0}, "group_size"),
        ({"bits": 4, "clusters": 16}, "unknown key"),
    ],
)
def test_bad_options_are_profile_errors(options: dict, match: str) -> None:
    with pytest.raises(ProfileError, match=match):
        Palettize().parse(options)
