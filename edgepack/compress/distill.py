"""Knowledge distillation: train a small *student* to match a trained *teacher* (Hinton et al., 2015).

The loss is ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``;
without labels only the soft term is used (edgepack never invents labels). The teacher is frozen and run
in eval mode; the student is trained on a copy, on the CPU, deterministically for a given seed (the
global torch RNG is forked, so a caller's random state is left untouched).

Training data is either an edgepack :class:`~edgepack.data.dataset.Dataset` (batched and shuffled here)
or an iterable of batches. A batch is ``(inputs, labels)`` with ``labels`` an integer tensor or ``None``,
or bare ``inputs``; ``inputs`` is one tensor, a tuple of tensors (positional model inputs) or a dict
of tensors (keyword model inputs). The same batch helpers serve :mod:`edgepack.compress.qat`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgepack.compress.passes import PassConfig, PassContext, TorchPass
from edgepack.data.dataset import Dataset
from edgepack.errors import InputError

Batch = tuple[Any, "torch.Tensor | None"]
"""``(inputs, labels)``: ``inputs`` a tensor, a tuple or a dict of tensors; ``labels`` int64 or ``None``."""


# --------------------------------------------------------------------------- batches (shared with qat)


def split_batch(batch: Any) -> Batch:
    """Split one batch into ``(inputs, labels)``; a bare tensor or dict is inputs without labels."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and (batch[1] is None or torch.is_tensor(batch[1])):
        inputs, labels = batch
        if labels is not None and (labels.is_floating_point() or labels.is_complex()):
            raise InputError(f"training labels must be integer class indices, got dtype {labels.dtype}")
        return inputs, labels
    if torch.is_tensor(batch) or isinstance(batch, dict):
        return batch, None
    raise InputError(
        f"cannot read a training batch of type {type(batch).__name__}",
        hint="give (inputs, labels) pairs, or bare input tensors when there are no labels",
    )


def call_module(module: nn.Module, inputs: Any) -> torch.Tensor:
    """Run ``module`` on batch inputs: a tensor, a tuple of tensors (positional) or a dict (keywords)."""
    if isinstance(inputs, dict):
        output = module(**inputs)
    elif isinstance(inputs, (tuple, list)):
        output = module(*inputs)
    else:
        output = module(inputs)
    if not torch.is_tensor(output):
        raise InputError(f"the model returned {type(output).__name__}; training here needs one logits tensor")
    return output


def _dataset_batches(data: Dataset, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    order = torch.randperm(len(data), generator=generator).numpy()
    names = list(data.inputs)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        tensors = {name: torch.from_numpy(np.ascontiguousarray(data.inputs[name][index])) for name in names}
        inputs: Any = tensors[names[0]] if len(names) == 1 else tensors
        labels = None if data.labels is None else torch.from_numpy(np.asarray(data.labels[index], dtype=np.int64))
        yield inputs, labels


def epoch_batches(data: Iterable[Any] | Dataset, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """One epoch of ``(inputs, labels)`` batches: a :class:`Dataset` is shuffled with ``generator``."""
    if isinstance(data, Dataset):
        yield from _dataset_batches(data, batch_size, generator)
        return
    for batch in data:
        yield split_batch(batch)


def check_reiterable(data: Iterable[Any] | Dataset | None, epochs: int, what: str) -> Iterable[Any] | Dataset:
    """Refuse missing data, and one-shot iterators when more than one epoch is asked for."""
    if data is None:
        raise InputError(f"{what} needs training data", hint="pass train_data: batches of (inputs, labels)")
    if not isinstance(data, Dataset) and epochs > 1 and iter(data) is data:
        raise InputError(
            f"{what}: training data is a one-shot iterator but {epochs} epochs were asked for",
            hint="pass a list of batches, a torch DataLoader or an edgepack Dataset",
        )
    return data


# --------------------------------------------------------------------------- loss and training


class DistillConfig(PassConfig):
    """Options of the ``distill`` pass."""

    temperature: float = Field(default=4.0, gt=0)
    """Softmax temperature ``T`` of both teacher and student in the soft term."""
    alpha: float = Field(default=0.9, ge=0, le=1)
    """Weight of the soft (KL) term; ``1 - alpha`` weighs the hard cross-entropy on labels."""
    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=1e-2, gt=0)
    """Adam learning rate."""
    batch_size: int = Field(default=64, ge=1)
    """Batch size when the data is a :class:`Dataset` (iterables of batches keep their own)."""
    seed: int = 0


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    T: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``, batch-averaged.

    The ``T^2`` factor keeps the soft term's gradient scale independent of ``T``. With ``labels``
    ``None`` the result is the soft term alone, ``T^2 * KL`` (``alpha`` is then ignored).
    """
    if T <= 0:
        raise InputError(f"distillation temperature must be > 0, got {T}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"distillation alpha must be in [0, 1], got {alpha}")
    soft = F.kl_div(
        F.log_softmax(student_logits / T, dim=-1),
        F.log_softmax(teacher_logits.detach() / T, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (T * T)
    if labels is None:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Iterable[Any] | Dataset,
    config: DistillConfig | None = None,
) -> nn.Module:
    """Train a copy of ``student`` from ``teacher`` on ``data`` and return it in eval mode.

    ``student`` and ``teacher`` are left unchanged (the teacher's train/eval mode is restored). Both must
    take the same inputs and return logits of the same shape. Batches without labels get the pure soft
    loss. Deterministic on the CPU for a given ``config.seed``.
    """
    config = config or DistillConfig()
    data = check_reiterable(data, config.epochs, "distillation")
    trained = copy.deepcopy(student)
    was_training = teacher.training
    teacher.eval()
    steps = 0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            generator = torch.Generator().manual_seed(config.seed)
            optimizer = torch.optim.Adam(trained.parameters(), lr=config.lr)
            trained.train()
            for _ in range(config.epochs):
                for inputs, labels in epoch_batches(data, config.batch_size, generator):
                    with torch.no_grad():
                        teacher_logits = call_module(teacher, inputs)
                    student_logits = call_module(trained, inputs)
                    if student_logits.shape != teacher_logits.shape:
                        raise InputError(
                            f"student logits {tuple(student_logits.shape)} and teacher logits "
                            f"{tuple(teacher_logits.shape)} differ in shape"
                        )
                    loss = distillation_loss(student_logits, teacher_logits, labels, config.temperature, config.alpha)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    steps += 1
    finally:
        teacher.train(was_training)
    if steps == 0:
        raise InputError("distillation got no training batches")
    return trained.eval()


# --------------------------------------------------------------------------- the pass


def _student_from(context: PassContext) -> nn.Module:
    student = context.extra.get("student")
    if student is None:
        raise InputError(
            "the distill pass needs a student model",
            hint="set PassContext.extra['student'] to a torch module or a zero-argument factory",
        )
    if isinstance(student, nn.Module):
        return student
    if callable(student):
        built = student()
        if not isinstance(built, nn.Module):
            raise InputError(f"the student factory returned {type(built).__name__}, not a torch module")
        return built
    raise InputError(f"PassContext.extra['student'] is a {type(student).__name__}, not a torch module or factory")


class DistillPass(TorchPass):
    """``distill``: the recipe's module is the *teacher*; returns the student trained from it.

    Needs ``context.extra["student"]`` (a torch module, or a zero-argument factory returning one) with the
    teacher's input/output signature, and ``context.train_data`` (batches of ``(inputs, labels)``, or
    bare inputs: the loss is then the pure soft term).
    """

    name = "distill"
    Config = DistillConfig

    def apply(self, module: Any, config: PassConfig, context: PassContext) -> Any:
        student = _student_from(context)
        if context.train_data is None:
            raise InputError(
                "the distill pass needs training data",
                hint="set PassContext.train_data to batches of (inputs, labels) tensors",
            )
        return distill(student, module, context.train_data, cast(DistillConfig, config))

