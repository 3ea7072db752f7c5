"""Low-rank factorisation of Linear and Conv layers by truncated SVD (pass ``low_rank``).

A Linear ``W (out x in)`` becomes ``Linear(in -> r, no bias)`` followed by ``Linear(r -> out, bias)``;
a ConvNd with a ``k x k`` kernel becomes a ``k x k`` convolution to ``r`` channels (same stride,
padding, dilation) followed by a ``1 x 1`` convolution to the original outputs. The two factors are
``sqrt(S) Vh`` and ``U sqrt(S)`` of the weight's SVD (the conv weight is read as ``out x (in*k*k)``).

The rank of each layer is the smallest ``r`` whose singular values hold at least ``energy`` of the
total energy ``sum(s**2)``. A layer is replaced only when the factorised pair has at least
``min_reduction`` (fraction) fewer parameters than the original; grouped convolutions are left alone.
The replaced layer becomes an ``nn.Sequential`` of the two factors under the same name.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from edgepack.compress.passes import PassConfig, PassContext, TorchPass
from edgepack.compress.prune import LayerKind, as_config, check_module, run_pass, select_layers


class LowRankConfig(PassConfig):
    """Options of ``low_rank``: energy threshold in (0, 1], minimum parameter reduction, layer selection."""

    energy: float = Field(default=0.9, gt=0.0, le=1.0)
    min_reduction: float = Field(default=0.1, ge=0.0, lt=1.0)
    module_types: tuple[LayerKind, ...] = Field(default=("Conv", "Linear"), min_length=1)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerPlan:
    """The factorisation decided for one layer."""

    name: str
    full_rank: int
    rank: int
    params_before: int
    params_after: int

    @property
    def reduction(self) -> float:
        """Fraction of the layer's parameters removed by factorising it."""
        return 1.0 - self.params_after / self.params_before


def choose_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` with ``sum(s[:r]**2) >= energy * sum(s**2)`` (at least 1)."""
    squared = singular_values.double() ** 2
    total = float(squared.sum())
    if total == 0.0:
        return 1
    cumulative = torch.cumsum(squared, 0) / total
    # cumulative is normalised, so this is a relative slack: energy=1.0 must not demand more than round-off allows
    reached = (cumulative >= energy - 1e-12).nonzero()
    return int(reached[0]) + 1 if len(reached) else len(singular_values)


def _matrix(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight.detach()
    return weight.reshape(weight.shape[0], -1).double()


def _factorisable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed and layer.groups == 1


def _param_count(layer: nn.Module, rank: int) -> tuple[int, int]:
    """(parameters now, parameters of the factorised pair at ``rank``), biases included."""
    weight = layer.weight
    out_features, fan_in = weight.shape[0], weight[0].numel()
    bias = 0 if layer.bias is None else layer.bias.numel()
    return weight.numel() + bias, rank * (fan_in + out_features) + bias


def plan_layer(name: str, layer: nn.Module, energy: float) -> LayerPlan:
    """The rank ``energy`` asks for on ``layer`` and the parameter counts before and after."""
    singular_values = torch.linalg.svdvals(_matrix(layer))
    rank = choose_rank(singular_values, energy)
    before, after = _param_count(layer, rank)
    return LayerPlan(name, len(singular_values), rank, before, after)


def low_rank_plan(module: nn.Module, **options: Any) -> list[LayerPlan]:
    """The factorisation every selected layer would get (kept or not); ``options`` as :class:`LowRankConfig`."""
    cfg = as_config(LowRank().parse(options), LowRankConfig)
    return _plans(module, cfg)


def _plans(module: nn.Module, cfg: LowRankConfig) -> list[LayerPlan]:
    layers = select_layers(module, cfg.module_types, cfg.exclude, pass_name=LowRank.name)
    return [plan_layer(name, layer, cfg.energy) for name, layer in layers.items() if _factorisable(layer)]


def _split(layer: nn.Module, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, second)`` factor matrices ``(rank x fan_in)`` and ``(out x rank)`` with ``second @ first ≈ W``."""
    u, s, vh = torch.linalg.svd(_matrix(layer), full_matrices=False)
    root = s[:rank].sqrt()
    dtype = layer.weight.dtype
    return (root[:, None] * vh[:rank]).to(dtype), (u[:, :rank] * root[None, :]).to(dtype)


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``Linear(in -> rank, no bias)`` then ``Linear(rank -> out)`` approximating ``layer``."""
    first_w, second_w = _split(layer, rank)
    first = nn.Linear(layer.in_features, rank, bias=False, device=layer.weight.device, dtype=layer.weight.dtype)
    second = nn.Linear(
        rank, layer.out_features, bias=layer.bias is not None, device=layer.weight.device, dtype=layer.weight.dtype
    )
    with torch.no_grad():
        first.weight.copy_(first_w)
        second.weight.copy_(second_w)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factorize_conv(layer: nn.modules.conv._ConvNd, rank: int) -> nn.Sequential:
    """A ``k x k`` convolution to ``rank`` channels then a ``1 x 1`` convolution approximating ``layer``."""
    if layer.groups != 1 or layer.transposed:
        raise ValueError("only ungrouped, non-transposed convolutions can be factorised")
    first_w, second_w = _split(layer, rank)
    conv = type(layer)
    ones = (1,) * len(layer.kernel_size)
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    first = conv(
        layer.in_channels,
        rank,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        bias=False,
        padding_mode=layer.padding_mode,
        **factory,
    )
    second = conv(rank, layer.out_channels, ones, bias=layer.bias is not None, **factory)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)


def low_rank(module: nn.Module, *, context: PassContext | None = None, **options: Any) -> nn.Module:
    """A copy of ``module`` with layers factorised by SVD; ``options`` as :class:`LowRankConfig`."""
    return run_pass(LowRank(), module, options, context)


class LowRank(TorchPass):
    """Replace Linear/Conv layers by two thinner layers where the SVD energy threshold allows it."""

    name: ClassVar[str] = "low_rank"
    Config: ClassVar[type[PassConfig]] = LowRankConfig

    def apply(self, module: Any, config: PassConfig, context: PassContext) -> nn.Module:
        cfg = as_config(config, LowRankConfig)
        factored = copy.deepcopy(check_module(module, self.name))
        for plan in kept_plans(_plans(factored, cfg), cfg.min_reduction):
            layer = factored.get_submodule(plan.name)
            factorize = factorize_linear if isinstance(layer, nn.Linear) else factorize_conv
            split = factorize(layer, plan.rank)
            split.train(layer.training)
            if not plan.name:  # the module is itself the layer
                return split
            _replace(factored, plan.name, split)
        return factored


def kept_plans(plans: Sequence[LayerPlan], min_reduction: float) -> list[LayerPlan]:
    """The plans that remove parameters, and at least ``min_reduction`` of them."""
    return [p for p in plans if p.params_after < p.params_before and p.reduction >= min_reduction]
