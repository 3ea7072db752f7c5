"""Pruning passes: unstructured magnitude, structured channel removal, and 2:4 semi-structured sparsity.

* ``magnitude_prune`` zeroes the smallest-magnitude Conv/Linear weights, globally or per layer, in one
  shot or over ``schedule_steps`` steps with the user's fine-tune hooks in between. The zeros are
  written into the weights (no ``torch.nn.utils.prune`` re-parametrisation is left behind).
* ``structured_prune`` removes whole output channels (and the matching inputs / BatchNorm entries of
  the layers that consume them) with ``torch-pruning``'s dependency graph, so parameter count, FLOPs
  and the exported graph all shrink. Layers that feed a model output are never narrowed; a model
  whose forward hard-codes a channel count is refused, naming the layers to ``exclude``.
* ``semi_structured_24`` keeps the 2 largest of every 4 consecutive weights along the input-channel
  dimension (the pattern of Ampere+ sparse tensor cores / TensorRT).

Fine-tuning: when the :class:`~edgepack.compress.passes.PassContext` carries both ``train_step`` and
``train_data``, every pruning step is followed by ``finetune_epochs`` passes of
``train_step(module, batch)`` over ``train_data`` (which must be re-iterable, e.g. a list or a
``DataLoader``); masks are re-applied after every step so pruned weights stay zero. The module is in
train mode during ``train_step``. Structured pruning replaces parameter tensors, so a ``train_step``
that caches an optimizer must rebuild it when ``module.parameters()`` change.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgepack.compress.passes import PassConfig, PassContext, TorchPass
from edgepack.errors import InputError, ProfileError, UnsupportedError

LayerKind = Literal["Conv", "Linear"]
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "Conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "Linear": (nn.Linear,),
}
"""Module classes selected by each ``module_types`` entry (transposed convolutions are not included)."""

_C = TypeVar("_C", bound=PassConfig)


# --------------------------------------------------------------------------------------------------
# Shared helpers (also used by the low-rank and clustering passes)
# --------------------------------------------------------------------------------------------------


def as_config(config: PassConfig, cls: type[_C]) -> _C:
    """``config`` typed as ``cls``; a config of another pass is a programming error."""
    if not isinstance(config, cls):
        raise TypeError(f"expected {cls.__name__}, got {type(config).__name__}")
    return config


def check_module(module: Any, pass_name: str) -> nn.Module:
    """``module`` if it is a torch module, else :class:`InputError`."""
    if not isinstance(module, nn.Module):
        raise InputError(f"pass '{pass_name}' needs a torch.nn.Module, got {type(module).__name__}")
    return module


def select_layers(
    module: nn.Module, module_types: Iterable[str], exclude: Iterable[str], *, pass_name: str
) -> dict[str, nn.Module]:
    """Named Conv/Linear layers of ``module`` of the given kinds, minus ``exclude``.

    An ``exclude`` entry names a module exactly or a parent of it (``"features"`` excludes
    ``"features.0"``). An entry that matches no module is a :class:`ProfileError` (a typo would
    otherwise silently compress the layer the user meant to keep).
    """
    types = tuple(t for kind in module_types for t in LAYER_TYPES[kind])
    names = [name for name, _ in module.named_modules() if name]
    excluded = tuple(exclude)
    unknown = [e for e in excluded if not any(_matches(name, e) for name in names)]
    if unknown:
        raise ProfileError(
            f"pass '{pass_name}': exclude: {', '.join(map(repr, unknown))} names no module of the model",
            hint=f"modules: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}",
        )
    return {
        name: layer
        for name, layer in module.named_modules()
        if isinstance(layer, types) and not any(_matches(name, e) for e in excluded)
    }


def run_pass(pass_: TorchPass, module: nn.Module, options: dict[str, Any], context: PassContext | None) -> nn.Module:
    """Validate ``options`` for ``pass_`` (:class:`ProfileError` on bad ones) and apply it to a copy of ``module``."""
    return pass_.apply(module, pass_.parse(options), context or PassContext())


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".")


def finetune(
    module: nn.Module,
    context: PassContext,
    epochs: int,
    masks: dict[nn.Parameter, torch.Tensor] | None = None,
) -> bool:
    """Run ``epochs`` passes of ``context.train_step`` over ``context.train_data``; True if any ran.

    Without both hooks nothing happens (one-shot compression). ``masks`` (parameter -> 0/1 tensor)
    are re-applied after every step so pruned weights stay zero.
    """
    if epochs == 0 or (context.train_step is None and context.train_data is None):
        return False
    if context.train_step is None or context.train_data is None:
        given, missing = ("train_step", "train_data") if context.train_data is None else ("train_data", "train_step")
        raise InputError(f"fine-tuning needs both train_step and train_data; {given} was given without {missing}")
    if iter(context.train_data) is context.train_data:
        raise InputError("train_data must be re-iterable (a list or DataLoader), not a one-shot iterator")
    was_training = module.training
    module.train()
    try:
        for _ in range(epochs):
            for batch in context.train_data:
                context.train_step(module, batch)
                if masks:
                    apply_masks(masks)
    finally:
        module.train(was_training)
    return True


@torch.no_grad()
def apply_masks(masks: dict[nn.Parameter, torch.Tensor]) -> None:
    """Multiply every parameter by its 0/1 mask in place."""
    for param, mask in masks.items():
        param.mul_(mask)


# --------------------------------------------------------------------------------------------------
# Unstructured magnitude pruning
# --------------------------------------------------------------------------------------------------


class _LayerSelection(PassConfig):
    """Which layers a pass touches: ``module_types`` ("Conv", "Linear") minus the ``exclude`` names."""

    module_types: tuple[LayerKind, ...] = Field(default=("Conv", "Linear"), min_length=1)
    exclude: tuple[str, ...] = ()


class MagnitudePruneConfig(_LayerSelection):
    """Options of ``magnitude_prune``.

    ``sparsity`` is the fraction of selected weights set to zero; ``scope="global"`` ranks all selected
    weights together, ``"layer"`` prunes each layer to ``sparsity``. ``schedule_steps`` > 1 reaches the
    target gradually (``schedule`` "cubic" = Zhu & Gupta 2017, or "linear"), fine-tuning between steps
    when the context has training hooks; without hooks the target is applied in one shot.
    """

    sparsity: float = Field(ge=0.0, lt=1.0)
    scope: Literal["global", "layer"] = "global"
    schedule_steps: int = Field(default=1, ge=1, le=1000)
    schedule: Literal["cubic", "linear"] = "cubic"
    finetune_epochs: int = Field(default=1, ge=0)


def sparsity_schedule(target: float, steps: int, kind: str = "cubic") -> list[float]:
    """Sparsity after each of ``steps`` pruning steps, ending exactly at ``target``."""
    fractions = [(i + 1) / steps for i in range(steps)]
    if kind == "linear":
        return [target * f for f in fractions]
    return [target * (1.0 - (1.0 - f) ** 3) for f in fractions]


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """0/1 masks that zero the ``sparsity`` fraction of smallest-magnitude entries (ties: lowest index)."""
    if scope == "layer":
        return {name: _smallest_mask(w.detach().abs().flatten(), sparsity).view_as(w) for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    mask = _smallest_mask(flat, sparsity)
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, w in weights.items():
        out[name] = mask[start : start + w.numel()].view_as(w).to(w.dtype)
        start += w.numel()
    return out


def _smallest_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    count = int(round(fraction * scores.numel()))
    mask = torch.ones_like(scores)
    if count:
        mask[torch.argsort(scores, stable=True)[:count]] = 0
    return mask


def magnitude_prune(module: nn.Module, *, context: PassContext | None = None, **options: Any) -> nn.Module:
    """A copy of ``module`` with unstructured magnitude pruning; ``options`` as :class:`MagnitudePruneConfig`."""
    return run_pass(MagnitudePrune(), module, options, context)


class MagnitudePrune(TorchPass):
    """Unstructured magnitude pruning of Conv/Linear weights with an optional iterative schedule."""

    name: ClassVar[str] = "magnitude_prune"
    Config: ClassVar[type[PassConfig]] = MagnitudePruneConfig

    def apply(self, module: Any, config: PassConfig, context: PassContext) -> nn.Module:
        cfg = as_config(config, MagnitudePruneConfig)
        pruned = copy.deepcopy(check_module(module, self.name))
        layers = select_layers(pruned, cfg.module_types, cfg.exclude, pass_name=self.name)
        params = {name: layer.weight for name, layer in layers.items()}
        can_tune = cfg.finetune_epochs > 0 and context.train_step is not None and context.train_data is not None
        steps = sparsity_schedule(cfg.sparsity, cfg.schedule_steps, cfg.schedule) if can_tune else [cfg.sparsity]
        for target in steps:
            masks = magnitude_masks(dict(params), target, cfg.scope)
            by_param = {params[name]: mask for name, mask in masks.items()}
            apply_masks(by_param)
            finetune(pruned, context, cfg.finetune_epochs, by_param)
        return pruned


def sparsity_report(module: nn.Module, *, module_types: Sequence[LayerKind] = ("Conv", "Linear")) -> dict[str, Any]:
    """Fraction of exactly-zero weights, per Conv/Linear layer and over all of them.

    Returns ``{"layers": {name: {"params", "zeros", "sparsity"}}, "params", "zeros", "sparsity"}``.
    """
    layers: dict[str, dict[str, float]] = {}
    for name, layer in select_layers(module, module_types, (), pass_name="sparsity_report").items():
        weight = layer.weight.detach()
        zeros = int((weight == 0).sum())
        layers[name] = {"params": weight.numel(), "zeros": zeros, "sparsity": zeros / max(weight.numel(), 1)}
    total = sum(int(v["params"]) for v in layers.values())
    zeros = sum(int(v["zeros"]) for v in layers.values())
    return {"layers": layers, "params": total, "zeros": zeros, "sparsity": zeros / max(total, 1)}


# --------------------------------------------------------------------------------------------------
# 2:4 semi-structured sparsity
# --------------------------------------------------------------------------------------------------


class SemiStructured24Config(_LayerSelection):
    """Options of ``semi_structured_24``: which layers, and fine-tune epochs after pruning (masks held)."""

    finetune_epochs: int = Field(default=1, ge=0)


def _groups_of_four(weight: torch.Tensor) -> torch.Tensor:
    """View ``weight`` (out, in, *kernel) as rows of 4 consecutive input channels."""
    moved = weight.movedim(1, -1) if weight.dim() > 2 else weight
    return moved.reshape(-1, 4)


def is_24_eligible(layer: nn.Module) -> bool:
    """True for Linear/Conv layers whose input-channel count (per group) is a multiple of 4."""
    if not isinstance(layer, LAYER_TYPES["Conv"] + LAYER_TYPES["Linear"]):
        return False
    return layer.weight.shape[1] % 4 == 0


def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """0/1 mask keeping the 2 largest-magnitude weights of every 4 along the input dimension (dim 1)."""
    if weight.dim() < 2 or weight.shape[1] % 4:
        raise InputError(f"a 2:4 mask needs an input dimension that is a multiple of 4, got shape {list(weight.shape)}")
    groups = _groups_of_four(weight.detach().abs())
    keep = groups.topk(2, dim=1).indices
    mask = torch.zeros_like(groups).scatter_(1, keep, 1.0)
    if weight.dim() > 2:
        moved_shape = weight.movedim(1, -1).shape
        return mask.reshape(moved_shape).movedim(-1, 1).contiguous().to(weight.dtype)
    return mask.reshape(weight.shape).to(weight.dtype)


def is_24_sparse(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive weights along the input dimension has at most 2 non-zeros."""
    if weight.dim() < 2 or weight.shape[1] % 4:
        return False
    return bool(((_groups_of_four(weight.detach()) != 0).sum(dim=1) <= 2).all())


def semi_structured_report(module: nn.Module) -> dict[str, dict[str, bool]]:
    """For every Conv/Linear layer: ``{"eligible": ..., "sparse_24": ...}``."""
    return {
        name: {"eligible": is_24_eligible(layer), "sparse_24": is_24_sparse(layer.weight)}
        for name, layer in select_layers(module, ("Conv", "Linear"), (), pass_name="semi_structured_report").items()
    }


def semi_structured_24(module: nn.Module, *, context: PassContext | None = None, **options: Any) -> nn.Module:
    """A copy of ``module`` with 2:4 sparse eligible weights; ``options`` as :class:`SemiStructured24Config`."""
    return run_pass(SemiStructured24(), module, options, context)


class SemiStructured24(TorchPass):
    """2:4 sparsity on every eligible Conv/Linear weight (others are left dense)."""

    name: ClassVar[str] = "semi_structured_24"
    Config: ClassVar[type[PassConfig]] = SemiStructured24Config

    def apply(self, module: Any, config: PassConfig, context: PassContext) -> nn.Module:
        cfg = as_config(config, SemiStructured24Config)
        pruned = copy.deepcopy(check_module(module, self.name))
        layers = select_layers(pruned, cfg.module_types, cfg.exclude, pass_name=self.name)
        masks = {layer.weight: mask_24(layer.weight) for layer in layers.values() if is_24_eligible(layer)}
        apply_masks(masks)
        finetune(pruned, context, cfg.finetune_epochs, masks)
        return pruned


# --------------------------------------------------------------------------------------------------
# Structured (channel) pruning with torch-pruning
# --------------------------------------------------------------------------------------------------


class StructuredPruneConfig(PassConfig):
    """Options of ``structured_prune``.

    ``ratio`` is the fraction of output channels removed from every prunable layer (coupled layers,
    e.g. both sides of a residual add, are pruned together); ``round_to`` keeps the remaining channel
    counts multiples of that number; ``exclude`` keeps the output channels of the named layers.
    ``schedule_steps`` > 1 removes channels gradually with fine-tuning in between (training hooks).
    """

    ratio: float = Field(ge=0.0, lt=1.0)
    round_to: int | None = Field(default=None, ge=1)
    exclude: tuple[str, ...] = ()
    schedule_steps: int = Field(default=1, ge=1, le=100)
    finetune_epochs: int = Field(default=1, ge=0)


def example_inputs(context: PassContext) -> tuple[np.ndarray, ...]:
    """Positional example inputs for tracing: ``context.extra["example_inputs"]`` or the first calib sample.

    Inputs are ordered by ``context.input_names`` when given, otherwise in the mapping's order.
    """
    arrays = context.extra.get("example_inputs")
    if arrays is None and context.calib is not None and len(context.calib):
        arrays = context.calib.batch(0)
    if arrays is None:
        raise InputError(
            "structured pruning needs example inputs to trace the model",
            hint="give calibration data or context.extra['example_inputs'] = {input name: array}",
        )
    names = context.input_names or tuple(arrays)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"example inputs lack {missing}", hint=f"found {sorted(arrays)}")
    return tuple(np.asarray(arrays[n]) for n in names)


def _to_tensors(arrays: Sequence[np.ndarray], module: nn.Module, repeat: int = 1) -> tuple[torch.Tensor, ...]:
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    return tuple(torch.from_numpy(np.concatenate([a] * repeat, axis=0)).to(device) for a in arrays)


def _leaves(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)


def _output_shapes(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]] | str:
    """Shapes of the model's output tensors, or the error message when the forward fails."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return [tuple(t.shape) for t in _leaves(module(*inputs))]
    except Exception as exc:  # noqa: BLE001  (any failure of the user's forward is reported)
        return f"{type(exc).__name__}: {exc}"
    finally:
        module.train(was_training)


def _check_inputs(module: nn.Module, arrays: Sequence[np.ndarray]) -> tuple[tuple[torch.Tensor, ...], list]:
    """Inputs (batch of 2 when the model accepts it, exposing hard-coded batch reshapes) and the shapes."""
    for repeat in (2, 1):
        inputs = _to_tensors(arrays, module, repeat)
        shapes = _output_shapes(module, inputs)
        if not isinstance(shapes, str):
            return inputs, shapes
    raise InputError(f"the model does not run on the example inputs: {shapes}")


def _load_torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError:
        raise UnsupportedError(
            "structured_prune needs the torch-pruning package", hint="pip install torch-pruning"
        ) from None
    return torch_pruning


def _is_channel_sink(layer: nn.Module) -> bool:
    """A layer whose output does not carry its input channels (a non-depthwise Conv or a Linear)."""
    if isinstance(layer, nn.Linear):
        return True
    if isinstance(layer, nn.modules.conv._ConvNd):
        return not (layer.groups > 1 and layer.groups == layer.in_channels)
    return False


def output_layers(graph: Any) -> list[nn.Module]:
    """Prunable layers of a torch-pruning dependency graph whose output channels reach a model output."""
    found = []
    for layer, node in graph.module2node.items():
        if not isinstance(layer, nn.Module) or not _is_channel_sink(layer):
            continue
        stack, seen = list(node.outputs), set()
        reaches_output = not node.outputs
        while stack and not reaches_output:
            current = stack.pop()
            if id(current) in seen or _is_channel_sink(current.module):
                continue
            seen.add(id(current))
            reaches_output = not current.outputs
            stack.extend(current.outputs)
        if reaches_output:
            found.append(layer)
    return found


@contextmanager
def _tracing(module: nn.Module) -> Iterator[None]:
    """Run torch-pruning on ``module``: autograd on, training flag restored, its failures as UnsupportedError."""
    was_training = module.training
    try:
        with torch.enable_grad():
            yield
    except Exception as exc:  # noqa: BLE001  (torch-pruning raises bare errors on graphs it cannot handle)
        raise UnsupportedError(f"structured_prune cannot handle this model: {type(exc).__name__}: {exc}") from None
    finally:
        module.train(was_training)


class StructuredPrune(TorchPass):
    """Remove output channels of Conv/Linear layers (L1 group importance, torch-pruning dependency graph)."""

    name: ClassVar[str] = "structured_prune"
    Config: ClassVar[type[PassConfig]] = StructuredPruneConfig

    def apply(self, module: Any, config: PassConfig, context: PassContext) -> nn.Module:
        cfg = as_config(config, StructuredPruneConfig)
        original = check_module(module, self.name)
        arrays = example_inputs(context)
        check_inputs, expected = _check_inputs(original, arrays)
        pruned = copy.deepcopy(original)
        select_layers(pruned, ("Conv", "Linear"), cfg.exclude, pass_name=self.name)  # validates names
        pruner = self._pruner(pruned, cfg, _to_tensors(arrays, pruned))
        for _ in range(cfg.schedule_steps):
            with _tracing(pruned):
                pruner.step()
            if _output_shapes(pruned, check_inputs) != expected:
                raise self._refusal(original, cfg, arrays, check_inputs, expected)
            finetune(pruned, context, cfg.finetune_epochs)
        pruned.train(original.training)
        return pruned

    def _pruner(self, module: nn.Module, cfg: StructuredPruneConfig, inputs: tuple[torch.Tensor, ...]) -> Any:
        tp = _load_torch_pruning()
        ignored = output_layers(self._graph(module, inputs))
        ignored += [m for n, m in module.named_modules() if n and any(_matches(n, e) for e in cfg.exclude)]
        with _tracing(module):
            return tp.pruner.BasePruner(
                module,
                inputs,
                importance=tp.importance.GroupMagnitudeImportance(p=1),
                pruning_ratio=cfg.ratio,
                iterative_steps=cfg.schedule_steps,
                ignored_layers=ignored,
                round_to=cfg.round_to,
            )

    @staticmethod
    def _graph(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
        tp = _load_torch_pruning()
        with _tracing(module):
            return tp.DependencyGraph().build_dependency(module, example_inputs=inputs)

    def _refusal(
        self,
        original: nn.Module,
        cfg: StructuredPruneConfig,
        arrays: Sequence[np.ndarray],
        check_inputs: tuple[torch.Tensor, ...],
        expected: list,
    ) -> UnsupportedError:
        """Find which layers break the model when narrowed alone, and say to exclude them."""
        culprits = []
        for name in self._prunable_names(original, cfg, arrays):
            trial = copy.deepcopy(original)
            self._narrow_one(trial, name, _to_tensors(arrays, trial))
            if _output_shapes(trial, check_inputs) != expected:
                culprits.append(name)
        listed = ", ".join(repr(n) for n in culprits) or "(no single layer; a combination)"
        return UnsupportedError(
            f"structured_prune: removing output channels of {listed} breaks the model's forward "
            "(a hard-coded channel count in a reshape/view, or a layer torch-pruning does not know)",
            hint=f"add {listed} to the pass's exclude list" if culprits else "exclude the layers that feed the reshape",
        )

    def _prunable_names(self, module: nn.Module, cfg: StructuredPruneConfig, arrays: Sequence[np.ndarray]) -> list[str]:
        trial = copy.deepcopy(module)
        graph = self._graph(trial, _to_tensors(arrays, trial))
        skip = set(map(id, output_layers(graph)))
        return [
            name
            for name, layer in trial.named_modules()
            if _is_channel_sink(layer) and id(layer) not in skip and not any(_matches(name, e) for e in cfg.exclude)
        ]

    def _narrow_one(self, module: nn.Module, name: str, inputs: tuple[torch.Tensor, ...]) -> None:
        """Remove one output channel of the layer ``name`` (and its dependants) in place."""
        graph = self._graph(module, inputs)
        layer = module.get_submodule(name)
        handler = graph.get_pruner_of_module(layer).prune_out_channels
        group = graph.get_pruning_group(layer, handler, idxs=[0])
        if graph.check_pruning_group(group):
            group.prune()


def structured_prune(module: nn.Module, *, context: PassContext, **options: Any) -> nn.Module:
    """A copy of ``module`` with output channels removed; ``options`` as :class:`StructuredPruneConfig`.

    ``context`` must provide example inputs (calibration data or ``extra["example_inputs"]``).
    """
    return run_pass(StructuredPrune(), module, options, context)


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements of ``module``."""
    return sum(p.numel() for p in module.parameters())
