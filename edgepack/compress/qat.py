"""Quantization-aware training (QAT): int8 fake-quant in torch, fine-tuned, exported as QDQ ONNX.

Path used: **NNCF's PyTorch QAT** (``nncf.quantize`` on the ``torch.nn.Module``, NNCF 3.x). It inserts
NNCF's trainable fake-quantizers (symmetric per-channel int8 weights, per-tensor int8 activations with
calibrated ranges) at the places its hardware config quantizes, then the model is fine-tuned as usual.
It was preferred to ``torch.ao.quantization``'s ``prepare_qat_fx``, which torch 2.14 marks deprecated
("will be removed"), and NNCF is already edgepack's OpenVINO quantizer. What was found on this machine
(torch 2.14.1, NNCF 3.4) shapes the code:

* NNCF's CPU fake-quant kernels are a C++ extension compiled on first use (about 100 s here, more than
  NNCF's default 60 s load timeout, so a fresh machine fails), and the fallback it takes when the build
  fails wraps the reference kernels in ``torch.compile`` (slow to warm up, recompiles per tensor shape,
  about 10x slower than eager on the digits CNN). Before quantizing,
  :func:`prepare_qat` therefore installs NNCF's *own* pure-torch reference kernels, run eagerly (same
  arithmetic), unless the compiled extension is already loaded in this process.
* ``nncf.strip`` (to torch-native ``FakeQuantize``) needs ``torchao``, which is not a dependency.
  :func:`export_qdq_onnx` instead sets NNCF's own ``QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS``
  on every quantizer and uses the TorchScript ONNX exporter: each fake-quantizer becomes a
  ``QuantizeLinear`` -> ``DequantizeLinear`` pair (``axis`` = output channel for weights). NNCF applies
  the 7-bit clamp of half-range weights outside the traced graph, so the export first replaces every
  quantized weight by its fake-quantized value (what ``nncf.strip`` does too).
* NNCF attaches its quantizers as a child module of the model's root; a root ``nn.Sequential`` would
  then call that child as a layer, so a Sequential root is wrapped in :class:`SequentialRoot` first.
* A ``torch.fx.GraphModule`` is routed by ``nncf.quantize`` to NNCF's FX backend, which also needs
  ``torchao``; so BatchNorm folding (below) edits the original module and never hands NNCF a GraphModule.

ONNX Runtime's u8 x s8 kernels on CPUs without VNNI (AVX2 here) can saturate int16 intermediates with
full-range int8 weights. NNCF's overflow fix (option ``overflow_fix``, default: first convolution only)
keeps weights to 7 bits; in NNCF 3.4's torch backend it covers convolutions, not ``Linear`` layers, so
an int8 ``Linear``-heavy model can drift from its torch fake-quant twin on such CPUs (measured on a small
MLP here: 96-98 % top-1 agreement, against 100 % for the digits CNN); the parity gate sees it.

BatchNorm layers that directly follow a convolution are folded into it before quantizing (option
``fold_batchnorm``): the int8 weights are then the ones that run, and ONNX Runtime fuses the exported
``DQ -> Conv -> Q`` groups into ``QLinearConv`` (with BatchNorm left in between it runs a float conv).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgepack.compress.distill import call_module, check_reiterable, epoch_batches, split_batch
from edgepack.compress.passes import PassConfig, PassContext, TorchPass, TrainStep
from edgepack.data.dataset import Dataset
from edgepack.errors import ExportError, InputError

OPSET = 17
"""ONNX opset of the QDQ export (per-channel ``QuantizeLinear`` needs >= 13)."""


class QatConfig(PassConfig):
    """Options of the ``qat`` pass."""

    epochs: int = Field(default=2, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    """Adam learning rate of the fine-tune (weights and quantizer scales)."""
    batch_size: int = Field(default=64, ge=1)
    """Batch size when the training data is a :class:`Dataset` (iterables of batches keep their own)."""
    per_channel: bool = True
    """One weight scale per output channel (``False``: one per tensor)."""
    symmetric_activations: bool = True
    """Symmetric activation ranges (NNCF's PERFORMANCE preset); ``False``: asymmetric (MIXED)."""
    calibration_samples: int = Field(default=200, ge=1)
    """Samples used to initialise the activation ranges before training."""
    fold_batchnorm: bool = True
    """Fold each BatchNorm that follows a convolution into it before quantizing."""
    overflow_fix: Literal["first_layer", "all", "none"] = "first_layer"
    """Which weights use only 7 of their 8 bits (NNCF's overflow fix), so that u8 x s8 products cannot
    saturate the int16 intermediates of CPUs without VNNI (AVX2, AVX-512 without VNNI)."""
    seed: int = 0


# --------------------------------------------------------------------------- NNCF plumbing


class _EagerReferenceKernels:
    """NNCF's pure-torch reference fake-quant kernels, called eagerly (no C++ build, no torch.compile)."""

    @staticmethod
    def Quantize_forward(*args: Any) -> Any:  # noqa: N802  (NNCF's kernel names)
        from nncf.torch.quantization.reference import torch_executor

        return torch_executor.forward(*args)

    @staticmethod
    def Quantize_backward(*args: Any) -> Any:  # noqa: N802
        from nncf.torch.quantization.reference import torch_executor

        return torch_executor.backward(*args)


def _use_eager_kernels() -> None:
    """Give NNCF its reference CPU kernels unless a kernel set is already loaded in this process.

    This sets NNCF's private lazy-load slot (``ExtensionNamespace._loaded_namespace``, NNCF 3.x); if a
    later NNCF renames it, nothing is set and NNCF loads its own kernels as before.
    """
    from nncf.torch.quantization import extensions

    namespace = extensions.QuantizedFunctionsCPU
    if getattr(namespace, "_loaded_namespace", "absent") is None:
        namespace._loaded_namespace = _EagerReferenceKernels


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF draws Rich progress bars and logs at INFO; library code prints nothing."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        logger.setLevel(level)


def _quantizers(module: nn.Module) -> list[nn.Module]:
    from nncf.torch.quantization.layers import BaseQuantizer

    return [m for m in module.modules() if isinstance(m, BaseQuantizer)]


class SequentialRoot(nn.Module):
    """Holds a root ``nn.Sequential`` as ``body`` so NNCF's hook child is not run as one of its layers."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.body(*args, **kwargs)


# --------------------------------------------------------------------------- BatchNorm folding

_CONV_BN = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval mode) whose BatchNorms that directly follow a convolution are folded into it.

    The pairs are found by ``torch.fx`` tracing; the copy keeps its own class (the folded BatchNorm
    becomes ``nn.Identity``). A module without BatchNorm is returned copied and untouched.
    """
    folded = copy.deepcopy(module).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()):
        return folded
    try:
        graph = torch.fx.symbolic_trace(folded).graph
    except Exception as exc:  # noqa: BLE001  (any tracing failure means: cannot find the pairs)
        raise InputError(
            f"cannot trace the model to fold BatchNorm into convolutions: {str(exc).splitlines()[0][:160]}",
            hint="set the qat option fold_batchnorm = false",
        ) from None
    modules = dict(folded.named_modules())
    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        previous = node.args[0]
        if previous.op != "call_module" or len(previous.users) != 1:
            continue
        conv, bn = modules.get(str(previous.target)), modules.get(str(node.target))
        if any(isinstance(conv, c) and isinstance(bn, b) for c, b in _CONV_BN):
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(cast(nn.Module, conv), cast(nn.Module, bn))
            folded.set_submodule(str(previous.target), fused)
            folded.set_submodule(str(node.target), nn.Identity())
    return folded


# --------------------------------------------------------------------------- prepare / fine-tune / export


def _as_model_args(inputs: Any) -> Any:
    """NNCF calls ``model(*tuple)``, ``model(**dict)`` or ``model(tensor)``."""
    return tuple(inputs) if isinstance(inputs, list) else inputs


def _single_samples(batches: Iterable[Any] | Dataset, limit: int) -> list[Any]:
    """Up to ``limit`` calibration samples, each a batch of one, in data order."""
    samples: list[Any] = []
    if isinstance(batches, Dataset):
        for index in range(min(limit, len(batches))):
            arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batches.batch(index).items()}
            samples.append(next(iter(arrays.values())) if len(arrays) == 1 else arrays)
        return samples
    for batch in batches:
        inputs, _ = split_batch(batch)
        if isinstance(inputs, dict):
            count = len(next(iter(inputs.values())))
            rows = ({k: v[i : i + 1] for k, v in inputs.items()} for i in range(count))
        elif isinstance(inputs, (tuple, list)):
            count = len(inputs[0])
            rows = (tuple(t[i : i + 1] for t in inputs) for i in range(count))
        else:
            rows = (inputs[i : i + 1] for i in range(len(inputs)))
        for row in rows:
            samples.append(_as_model_args(row))
            if len(samples) >= limit:
                return samples
    return samples


def prepare_qat(
    module: nn.Module, calib_batches: Iterable[Any] | Dataset, config: QatConfig | None = None
) -> nn.Module:
    """A copy of ``module`` with int8 fake-quantizers whose ranges are calibrated on ``calib_batches``.

    ``calib_batches`` are batches in the format of :mod:`edgepack.compress.distill` (labels, if any,
    are ignored) or a :class:`Dataset`; the first ``config.calibration_samples`` samples are used.
    The result runs in torch as the int8 model will, and trains with :func:`fine_tune`. A root
    ``nn.Sequential`` comes back wrapped in :class:`SequentialRoot` (its layers under ``body``).
    """
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    config = config or QatConfig()
    samples = _single_samples(calib_batches, config.calibration_samples)
    if not samples:
        raise InputError("QAT needs calibration samples to initialise activation ranges")
    model = fold_batchnorm(module) if config.fold_batchnorm else copy.deepcopy(module).eval()
    if isinstance(model, nn.Sequential):
        model = SequentialRoot(model)
    preset = nncf.QuantizationPreset.PERFORMANCE if config.symmetric_activations else nncf.QuantizationPreset.MIXED
    overflow_fix = {"first_layer": OverflowFix.FIRST_LAYER, "all": OverflowFix.ENABLE, "none": OverflowFix.DISABLE}
    advanced = AdvancedQuantizationParameters(
        overflow_fix=overflow_fix[config.overflow_fix],
        weights_quantization_params=QuantizationParameters(per_channel=config.per_channel),
    )
    _use_eager_kernels()
    with torch.random.fork_rng(devices=[]), _quiet():
        torch.manual_seed(config.seed)
        quantized = nncf.quantize(
            model, nncf.Dataset(samples), preset=preset, subset_size=len(samples), advanced_parameters=advanced
        )
    if not _quantizers(quantized):
        raise InputError("NNCF inserted no fake-quantizers: the model has no quantizable operations")
    return quantized.eval()


def default_train_step(module: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy of the module's logits on a labelled ``(inputs, labels)`` batch (no optimizer step)."""
    inputs, labels = split_batch(batch)
    if labels is None:
        raise InputError(
            "QAT without a train_step needs labelled batches: edgepack never invents labels",
            hint="give (inputs, labels) batches, or a train_step(module, batch) -> loss",
        )
    return F.cross_entropy(call_module(module, inputs), labels)


def fine_tune(
    module: nn.Module,
    train_data: Iterable[Any] | Dataset,
    train_step: TrainStep | None = None,
    config: QatConfig | None = None,
) -> nn.Module:
    """Fine-tune a fake-quant ``module`` (from :func:`prepare_qat`) in place; returns it in eval mode.

    ``train_step(module, batch)`` returns the batch's loss. A loss tensor that requires grad is
    back-propagated and applied here with Adam (``config.lr``, weights and quantizer scales); any other
    return value (e.g. a float) means the step already updated the module itself. Without a
    ``train_step`` the loss is cross-entropy on labelled batches. Deterministic for a given seed.
    """
    config = config or QatConfig()
    data = check_reiterable(train_data, config.epochs, "QAT")
    step = train_step or default_train_step
    steps = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=config.lr)
        module.train()
        for _ in range(config.epochs):
            batches = epoch_batches(data, config.batch_size, generator) if isinstance(data, Dataset) else data
            for batch in batches:
                loss = step(module, batch)
                if torch.is_tensor(loss) and loss.requires_grad:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                steps += 1
    if steps == 0:
        raise InputError("QAT got no training batches")
    return module.eval()


def export_qdq_onnx(
    module: nn.Module,
    example_inputs: dict[str, np.ndarray],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: str | Path,
    *,
    dynamic_batch: bool = True,
) -> Path:
    """Export a fake-quant module (from :func:`prepare_qat`) to an ONNX QDQ file and return its path.

    Every fake-quantizer becomes ``QuantizeLinear`` -> ``DequantizeLinear`` with int8/uint8 zero points
    (weights per channel along ``axis``); scales and zero points are stored as initializers. Inputs are
    passed positionally in ``input_names`` order; with ``dynamic_batch`` axis 0 of every input and
    output is symbolic (``batch``). ``module`` itself is not changed.
    """
    import onnx
    from nncf.torch.quantization.layers import QuantizerExportMode

    missing = [name for name in input_names if name not in example_inputs]
    if missing:
        raise InputError(f"no example input for {missing}", hint=f"example_inputs has {sorted(example_inputs)}")
    model = copy.deepcopy(module).eval()
    quantizers = _quantizers(model)
    if not quantizers:
        raise InputError("the module has no fake-quantizers", hint="prepare it with edgepack.compress.qat.prepare_qat")
    args = tuple(torch.from_numpy(np.ascontiguousarray(example_inputs[name])) for name in input_names)
    _bake_weights(model, quantizers, args)
    for quantizer in quantizers:
        quantizer.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model,
                args,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"QDQ ONNX export failed: {str(exc).splitlines()[0][:200]}") from None
    proto = _constants_to_initializers(onnx.load(str(path)))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _bake_weights(model: nn.Module, quantizers: list[nn.Module], args: tuple[torch.Tensor, ...]) -> None:
    """Replace each quantized weight by its fake-quantized value (clamped to the quantizer's range, on its grid).

    NNCF clamps half-range (7-bit, the overflow fix) weights outside the traced graph during ONNX export, so
    the clamp would be lost and the file's int8 weights could use the full 8-bit range (and saturate the
    int16 intermediates of non-VNNI CPUs); ``nncf.strip`` bakes the weights the same way.
    """
    parameters = {id(p): p for p in model.parameters()}
    seen: dict[int, tuple[nn.Module, nn.Parameter]] = {}

    def record(quantizer: nn.Module, inputs: tuple[Any, ...]) -> None:
        if inputs and id(inputs[0]) in parameters:
            seen[id(quantizer)] = (quantizer, parameters[id(inputs[0])])

    handles = [q.register_forward_pre_hook(record) for q in quantizers]
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        for quantizer, weight in seen.values():
            weight.copy_(quantizer(weight))


def _constants_to_initializers(model: Any) -> Any:
    """Move ``Constant`` nodes' tensors (the exporter emits Q/DQ scales and zero points so) into initializers."""
    from onnx import helper, numpy_helper

    kept = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and len(node.attribute) == 1 and value is not None:
            array = numpy_helper.to_array(helper.get_attribute_value(value))
            model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


# --------------------------------------------------------------------------- the pass


class QatPass(TorchPass):
    """``qat``: int8 fake-quant inserted by NNCF, calibrated, then fine-tuned with the user's training hooks.

    Calibrates on ``context.calib`` (else the first samples of ``context.train_data``) and trains on
    ``context.train_data`` with ``context.train_step`` (default: cross-entropy, which needs labelled
    batches). The returned module still runs in torch with fake-quant; its artifact must be exported
    with :func:`export_qdq_onnx` (a plain ONNX export would not emit the QDQ pairs).
    """

    name = "qat"
    Config = QatConfig

    def apply(self, module: Any, config: PassConfig, context: PassContext) -> Any:
        qat_config = cast(QatConfig, config)
        if context.train_data is None:
            raise InputError(
                "the qat pass needs training data",
                hint="set PassContext.train_data to batches of (inputs, labels), and optionally a train_step",
            )
        calib: Iterable[Any] | Dataset = context.calib if context.calib is not None else context.train_data
        quantized = prepare_qat(module, calib, qat_config)
        tuned = fine_tune(quantized, context.train_data, context.train_step, qat_config)
        tuned.edgepack_onnx_export = export_qdq_onnx  # the hub export must emit Q/DQ pairs (see onnx.py)
        return tuned
