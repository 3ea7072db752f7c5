"""Low-rank (SVD) factorisation: planted low-rank layers, the digits CNN, options."""

from __future__ import annotations

import torch

import copy

import pytest
from torch import nn

from edgepack.compress.lowrank import (
    LowRank,
    choose_rank,
    factorize_conv,
    low_rank,
    low_rank_plan,
)
from edgepack.compress.prune import count_parameters
from edgepack.errors import ProfileError
from edgepack.models.demo_digits import digits_splits, load_digits_cnn


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(rows: int, cols: int, rank: int, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """A ``rows x cols`` matrix of exactly ``rank`` (plus optional Gaussian noise of that std)."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.linalg.qr(torch.randn(rows, rank, generator=generator)).Q
    right = torch.linalg.qr(torch.randn(cols, rank, generator=generator)).Q
    spectrum = torch.linspace(3.0, 1.0, rank)
    return left @ torch.diag(spectrum) @ right.T + noise * torch.randn(rows, cols, generator=generator)


def test_choose_rank_by_energy() -> None:
    values = torch.tensor([4.0, 3.0])  # energies 16 and 9 of 25
    assert choose_rank(values, 0.6) == 1
    assert choose_rank(values, 0.64) == 1
    assert choose_rank(values, 0.65) == 2
    assert choose_rank(values, 1.0) == 2
    assert choose_rank(torch.zeros(3), 0.9) == 1


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_planted_low_rank_linear_is_recovered(noise: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    with torch.no_grad():
        model[0].weight.copy_(planted(48, 64, rank=8, noise=noise))
    before = copy.deepcopy(model)
    plan = low_rank_plan(model, energy=0.999)[0]
    assert (plan.name, plan.full_rank, plan.rank) == ("0", 48, 8)
    assert plan.params_after == 8 * (64 + 48) + 48 < plan.params_before == 64 * 48 + 48
    factored = low_rank(model, energy=0.999, exclude=["2"])
    first, second = factored[0]
    assert (first.in_features, first.out_features, first.bias) == (64, 8, None)
    assert (second.in_features, second.out_features) == (8, 48)
    assert count_parameters(factored) == count_parameters(model) - plan.params_before + plan.params_after
    assert factored[2] is not model[2] and torch.equal(factored[2].weight, model[2].weight)
    inputs = torch.randn(16, 64)
    with torch.no_grad():
        torch.testing.assert_close(factored(inputs), model(inputs), atol=5e-3 + 20 * noise, rtol=0)
    for (key, value), (_, old) in zip(model.state_dict().items(), before.state_dict().items()):
        assert torch.equal(value, old), key


def test_bare_linear_module_is_replaced() -> None:
    layer = nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight.copy_(planted(48, 64, rank=4))
    factored = low_rank(layer, energy=0.999)
    assert isinstance(factored, nn.Sequential) and factored[0].out_features == 4
    assert isinstance(layer, nn.Linear) and layer.weight.shape == (48, 64)


@pytest.mark.parametrize("conv_type", [nn.Conv1d, nn.Conv2d])
def test_planted_low_rank_conv(conv_type: type[nn.Module]) -> None:
    torch.manual_seed(0)
    conv = conv_type(16, 32, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(planted(32, conv.weight[0].numel(), rank=4).reshape(conv.weight.shape))
    (plan,) = low_rank_plan(conv, energy=0.999)
    assert plan.rank == 4
    pair = factorize_conv(conv, plan.rank)
    assert pair[0].kernel_size == conv.kernel_size and pair[0].stride == conv.stride
    assert pair[0].out_channels == 4 and pair[1].kernel_size == (1,) * len(conv.kernel_size)
    inputs = torch.randn(2, 16, *([9] * len(conv.kernel_size)))
    with torch.no_grad():
        torch.testing.assert_close(pair(inputs), conv(inputs), atol=1e-4, rtol=1e-4)
    assert count_parameters(pair) < count_parameters(conv)


def test_layers_without_reduction_are_kept() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 4))
    plans = low_rank_plan(model, energy=1.0)
    assert all(p.rank == p.full_rank and p.params_after >= p.params_before for p in plans)
    factored = low_rank(model, energy=1.0)
    assert [type(m) for m in factored] == [nn.Linear, nn.Linear]
    # a real reduction that is below min_reduction is not taken either
    with torch.no_grad():
        model[0].weight.copy_(planted(32, 32, rank=14))  # 14 * 64 = 896 vs 1024: 12.5 % fewer
    assert isinstance(low_rank(model, energy=0.999, min_reduction=0.1)[0], nn.Sequential)
    assert isinstance(low_rank(model, energy=0.999, min_reduction=0.2)[0], nn.Linear)


def test_low_rank_on_digits_keeps_accuracy() -> None:
    model = load_digits_cnn()
    images, labels = digits_splits()["eval"]
    inputs = torch.from_numpy(images)

    def top1(module: nn.Module) -> float:
        with torch.no_grad():
            return float((module.eval()(inputs).argmax(dim=1).numpy() == labels).mean())

    factored = low_rank(model, energy=0.9, min_reduction=0.25)
    assert isinstance(factored.features[7], nn.Sequential)  # the 32->64 conv has the most to gain
    assert isinstance(factored.features[0], nn.Conv2d)  # 9-tap 1-channel conv: nothing to gain
    assert count_parameters(factored) < 0.8 * count_parameters(model)
    assert top1(factored) >= top1(model) - 0.03
    assert isinstance(model.features[7], nn.Conv2d)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"energy": 0.0}, "energy"),
        ({"energy": 1.5}, "energy"),
        ({"min_reduction": 1.0}, "min_reduction"),
        ({"rank": 4}, "unknown key"),
    ],
)
def test_bad_options_are_profile_errors(options: dict, match: str) -> None:
    with pytest.raises(ProfileError, match=match):
        LowRank().parse(options)


def test_unknown_exclude_is_refused() -> None:
    with pytest.raises(ProfileError, match="nope"):
        low_rank(nn.Sequential(nn.Linear(4, 4)), exclude=["nope"])


def test_plan_ranks_are_deterministic() -> None:
    model = load_digits_cnn()
    first = [(p.name, p.rank) for p in low_rank_plan(model, energy=0.9)]
    assert first == [(p.name, p.rank) for p in low_rank_plan(model, energy=0.9)]
    ranks = [low_rank_plan(model, energy=e)[2].rank for e in (0.5, 0.9, 0.99)]  # features.7
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
