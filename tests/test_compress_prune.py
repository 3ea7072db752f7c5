"""Pruning passes on the real digits CNN (eval split top-1) and on small models built here."""

from __future__ import annotations

import torch

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from torch import nn

from edgepack.compress.passes import PassContext
from edgepack.compress.prune import (
    MagnitudePrune,
    SemiStructured24,
    StructuredPrune,
    count_parameters,
    is_24_sparse,
    magnitude_prune,
    mask_24,
    semi_structured_24,
    semi_structured_report,
    sparsity_report,
    structured_prune,
)
from edgepack.data.dataset import Dataset
from edgepack.errors import InputError, ProfileError, UnsupportedError
from edgepack.models.demo_digits import digits_splits, load_digits_cnn

import onnx


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return digits_splits()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return load_digits_cnn()


@pytest.fixture(scope="module")
def baseline(model: nn.Module, splits) -> float:
    return top1(model, splits)


@pytest.fixture(scope="module")
def train_batches(splits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = splits["train"]
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = torch.from_numpy(images[order]), torch.from_numpy(labels[order])
    return [(images[i : i + 128], labels[i : i + 128]) for i in range(0, len(labels), 128)]


@pytest.fixture(scope="module")
def calib(splits) -> Dataset:
    images, labels = splits["calib"]
    return Dataset({"image": images}, labels, "digits/calib")


class FineTune:
    """A real fine-tune step: Adam on cross-entropy; the optimizer is rebuilt when the parameters change."""

    def __init__(self, lr: float = 3e-3) -> None:
        self.lr = lr
        self.key: tuple[int, ...] = ()
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0

    def __call__(self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        params = list(module.parameters())
        if tuple(map(id, params)) != self.key:
            self.key, self.optimizer = tuple(map(id, params)), torch.optim.Adam(params, lr=self.lr)
        images, labels = batch
        loss = F.cross_entropy(module(images), labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach())


def top1(module: nn.Module, splits) -> float:
    images, labels = splits["eval"]
    module.eval()
    with torch.no_grad():
        return float((module(torch.from_numpy(images)).argmax(dim=1).numpy() == labels).mean())


def snapshot(module: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    return repr(module), {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: tuple[str, dict[str, torch.Tensor]]) -> None:
    structure, state = before
    assert repr(module) == structure
    now = module.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(now[key], value), key


def onnx_weight_bytes(module: nn.Module, example: torch.Tensor, path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module.eval(), (example,), str(path), input_names=["image"], dynamo=False)
    graph = onnx.load(str(path)).graph
    tensors = list(graph.initializer) + [
        a.t for node in graph.node if node.op_type == "Constant" for a in node.attribute if a.name == "value"
    ]
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in tensors)


# -- magnitude pruning -------------------------------------------------------------------------------


def test_magnitude_50_global_keeps_accuracy_and_sparsity(model, splits, baseline) -> None:
    before = snapshot(model)
    pruned = magnitude_prune(model, sparsity=0.5, scope="global")
    report = sparsity_report(pruned)
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert report["params"] == sum(layer["params"] for layer in report["layers"].values())
    accuracy = top1(pruned, splits)
    assert baseline >= 0.95 and accuracy >= baseline - 0.05, (baseline, accuracy)
    assert_unchanged(model, before)
    # zeros are permanent: no torch.nn.utils.prune re-parametrisation or hooks are left
    for name, layer in pruned.named_modules():
        assert not hasattr(layer, "weight_orig") and not hasattr(layer, "weight_mask"), name
        assert not layer._forward_pre_hooks, name
    assert all(isinstance(p, nn.Parameter) for p in pruned.parameters())


def test_magnitude_90_one_shot_drops_accuracy(model, splits, baseline) -> None:
    pruned = magnitude_prune(model, sparsity=0.9)
    assert sparsity_report(pruned)["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert baseline - top1(pruned, splits) > 0.10


def test_iterative_schedule_with_finetune_recovers(model, splits, train_batches) -> None:
    one_shot = top1(magnitude_prune(model, sparsity=0.9), splits)
    step = FineTune()
    context = PassContext(train_data=train_batches, train_step=step)
    tuned = magnitude_prune(model, sparsity=0.9, schedule_steps=3, finetune_epochs=1, context=context)
    assert step.steps == 3 * len(train_batches)
    # fine-tuning did not revive pruned weights
    assert sparsity_report(tuned)["sparsity"] == pytest.approx(0.9, abs=1e-4)
    accuracy = top1(tuned, splits)
    assert accuracy >= 0.9 and accuracy > one_shot + 0.3, (one_shot, accuracy)
    assert not tuned.training


def test_layer_scope_prunes_each_layer_and_respects_exclude(model) -> None:
    pruned = magnitude_prune(model, sparsity=0.6, scope="layer", exclude=["features.0"], module_types=["Conv"])
    layers = sparsity_report(pruned)["layers"]
    assert layers["features.3"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert layers["features.7"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert torch.equal(pruned.features[0].weight, model.features[0].weight)
    assert torch.equal(pruned.classifier.weight, model.classifier.weight)


def test_finetune_needs_both_hooks(model, train_batches) -> None:
    with pytest.raises(InputError, match="train_data"):
        magnitude_prune(model, sparsity=0.5, context=PassContext(train_step=FineTune()))
    with pytest.raises(InputError, match="re-iterable"):
        magnitude_prune(
            model, sparsity=0.5, context=PassContext(train_data=iter(train_batches), train_step=FineTune())
        )


@pytest.mark.parametrize(
    ("pass_", "options", "match"),
    [
        (MagnitudePrune(), {"sparsity": 1.5}, "sparsity"),
        (MagnitudePrune(), {"sparsity": 0.5, "sparsityy": 0.2}, "unknown key"),
        (MagnitudePrune(), {"sparsity": 0.5, "scope": "model"}, "scope"),
        (MagnitudePrune(), {"sparsity": 0.5, "module_types": ["Embedding"]}, "module_types"),
        (MagnitudePrune(), {}, "sparsity"),
        (StructuredPrune(), {"ratio": 1.0}, "ratio"),
        (StructuredPrune(), {"ratio": 0.5, "round_to": 0}, "round_to"),
        (SemiStructured24(), {"n": 4}, "unknown key"),
    ],
)
def test_bad_options_are_profile_errors(pass_, options, match: str) -> None:
    with pytest.raises(ProfileError, match=match):
        pass_.parse(options)


def test_unknown_exclude_name_is_refused(model) -> None:
    with pytest.raises(ProfileError, match="featurez"):
        magnitude_prune(model, sparsity=0.5, exclude=["featurez.0"])


# -- 2:4 semi-structured ----------------------------------------------------------------------------


def test_mask_24_keeps_two_largest_along_input_dim() -> None:
    linear = torch.tensor([[1.0, -5.0, 3.0, 0.5, 0.0, 2.0, -2.5, 1.0]])
    assert mask_24(linear).tolist() == [[0, 1, 1, 0, 0, 1, 1, 0]]
    conv = torch.tensor([1.0, -5.0, 3.0, 0.5]).reshape(1, 4, 1, 1).repeat(2, 1, 2, 2)
    mask = mask_24(conv)
    assert mask[:, :, 0, 0].tolist() == [[0, 1, 1, 0]] * 2 and mask.sum() == conv.numel() / 2
    assert is_24_sparse(conv * mask) and not is_24_sparse(conv)
    assert not is_24_sparse(torch.ones(3, 6))  # input dim not a multiple of 4
    with pytest.raises(InputError):
        mask_24(torch.ones(3, 6))


def test_semi_structured_24_on_digits(model, splits, train_batches, baseline) -> None:
    before = snapshot(model)
    one_shot = semi_structured_24(model)
    report = semi_structured_report(one_shot)
    eligible = [name for name, row in report.items() if row["eligible"]]
    assert eligible == ["features.3", "features.7", "classifier"]
    assert all(report[name]["sparse_24"] for name in eligible)
    assert torch.equal(one_shot.features[0].weight, model.features[0].weight)  # 1 input channel: left dense
    layers = sparsity_report(one_shot)["layers"]
    assert all(layers[name]["sparsity"] == pytest.approx(0.5) for name in eligible)
    tuned = semi_structured_24(model, context=PassContext(train_data=train_batches, train_step=FineTune()))
    assert all(is_24_sparse(tuned.get_submodule(name).weight) for name in eligible)
    assert top1(tuned, splits) >= baseline - 0.03
    assert_unchanged(model, before)


# -- structured (channel) pruning -------------------------------------------------------------------


class ResidualNet(nn.Module):
    """Conv-BN-ReLU stem, a residual block (coupled channels), global mean pool, Linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 32, 3, padding=1))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean(dim=(2, 3)))


def test_structured_refuses_hard_coded_reshape_naming_the_layer(model, calib) -> None:
    # DigitsCNN's forward reshapes to a constant 64 features: narrowing features.7 would break it
    with pytest.raises(UnsupportedError, match="features.7"):
        structured_prune(model, context=PassContext(calib=calib), ratio=0.5)


def test_structured_prune_digits_shrinks_params_and_onnx(model, splits, calib, train_batches, tmp_path) -> None:
    before = snapshot(model)
    context = PassContext(calib=calib, input_names=("image",))
    pruned = structured_prune(model, context=context, ratio=0.5, exclude=["features.7"])
    assert [pruned.features[i].out_channels for i in (0, 3, 7)] == [8, 16, 64]
    assert pruned.features[1].num_features == 8 and pruned.features[7].in_channels == 16
    assert count_parameters(pruned) < 0.5 * count_parameters(model)
    example = torch.from_numpy(splits["eval"][0][:4])
    assert onnx_weight_bytes(pruned, example, tmp_path / "p.onnx") < 0.5 * onnx_weight_bytes(
        model, example, tmp_path / "m.onnx"
    )
    with torch.no_grad():
        assert pruned(example).shape == (4, 10)
    assert_unchanged(model, before)
    # the fine-tune hook recovers most of what removing half the channels costs
    tuned = structured_prune(
        model,
        context=PassContext(calib=calib, train_data=train_batches, train_step=FineTune()),
        ratio=0.5,
        exclude=["features.7"],
    )
    assert top1(tuned, splits) > top1(pruned, splits) + 0.2


def test_structured_prune_residual_model_round_to(tmp_path) -> None:
    net = ResidualNet().eval()
    example = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    context = PassContext(extra={"example_inputs": {"pixels": example}})
    pruned = structured_prune(net, context=context, ratio=0.4, round_to=8)
    stem, first, second = pruned.stem[0], pruned.block[0], pruned.block[2]
    # the residual add couples stem and block output channels: pruned together, kept multiples of 8
    assert stem.out_channels == second.out_channels == pruned.head.in_features == pruned.stem[1].num_features
    assert stem.out_channels % 8 == 0 and first.out_channels % 8 == 0
    assert stem.out_channels < 32 and first.out_channels < 48
    assert pruned.head.out_features == 5  # the output layer is never narrowed
    assert count_parameters(pruned) < 0.6 * count_parameters(net)
    inputs = torch.from_numpy(np.repeat(example, 3, axis=0))
    with torch.no_grad():
        assert pruned(inputs).shape == (3, 5)
    assert onnx_weight_bytes(pruned, inputs, tmp_path / "p.onnx") < onnx_weight_bytes(net, inputs, tmp_path / "m.onnx")


def test_structured_prune_needs_example_inputs(model) -> None:
    with pytest.raises(InputError, match="example inputs"):
        structured_prune(model, context=PassContext(), ratio=0.5)


def test_every_pruning_pass_leaves_input_unchanged(model, calib) -> None:
    source = copy.deepcopy(model).train()
    before = snapshot(source)
    magnitude_prune(source, sparsity=0.7)
    semi_structured_24(source)
    structured_prune(source, context=PassContext(calib=calib), ratio=0.25, exclude=["features.7"])
    assert_unchanged(source, before)
    assert source.training
