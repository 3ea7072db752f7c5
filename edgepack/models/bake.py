"""``--bake-preprocess``: move an image input's preprocessing into the model graph.

:func:`bake_preprocess` turns a source whose image input is float ``[N, C, H, W]`` with a known
:class:`~edgepack.models.source.Preprocess` into one whose input is the camera/bitmap format, ``uint8``
``[N, H, W, C]``, and whose graph starts with ``cast -> * scale -> (x - mean) / std -> transpose to NCHW``.
It works at the source level, so every exporter (ONNX Runtime, OpenVINO, TFLite, Core ML, TensorRT, Edge TPU)
gets the baked graph without a per-runtime branch: torch sources are wrapped in :class:`BakedPreprocess`,
ONNX sources get the ops prepended to a copy of their graph.

The baked input records an identity preprocessing (scale 1, mean 0, std 1) whose description says what
was baked, so the contract tells apps to feed raw pixels. Datasets given in the model's float layout are
converted back to raw pixels with :func:`raw_pixels`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.data.dataset import Dataset, InputArrays
from edgepack.errors import InputError
from edgepack.models.onnx_rewrite import save_rewritten
from edgepack.models.source import ModelSource, Preprocess, TensorSpec

BAKED_PREFIX = "baked into the model: "
"""Start of the description of a baked input's (identity) preprocessing."""
UNBAKED_KEY = "unbaked_inputs"
"""``ModelSource.extra`` key holding the float input specs the baked inputs replaced."""


def is_image_input(spec: TensorSpec) -> bool:
    """A 4-D float input laid out NCHW or NHWC (the inputs baking applies to)."""
    return len(spec.shape) == 4 and spec.dtype.startswith("float") and _layout(spec) is not None


def _layout(spec: TensorSpec) -> str | None:
    if spec.layout in ("NCHW", "NHWC"):
        return spec.layout
    if spec.layout is None and len(spec.shape) == 4:
        if spec.shape[1] in (1, 3):
            return "NCHW"
        if spec.shape[3] in (1, 3):
            return "NHWC"
    return None


def raw_pixels(data: Dataset, specs: Sequence[TensorSpec]) -> Dataset:
    """The inputs of ``data`` named by ``specs`` (float images preprocessed as ``spec.preprocess`` says) back as
    raw ``uint8`` NHWC pixels: ``(x * std + mean) / scale`` -> round -> clip 0..255 -> uint8 -> NHWC; other
    inputs are kept as they are."""
    inputs = dict(data.inputs)
    for spec in specs:
        if spec.name not in inputs:
            continue
        array = np.asarray(inputs[spec.name], np.float32)
        scale, mean, std = channel_params(spec)
        if _layout(spec) == "NCHW":
            array = array.transpose(0, 2, 3, 1)
        raw = (array * std + mean) / np.float32(scale)
        inputs[spec.name] = np.ascontiguousarray(np.clip(np.rint(raw), 0, 255).astype(np.uint8))
    return Dataset(InputArrays(inputs, data.batch_axes), data.labels, f"{data.origin} (raw uint8 pixels)")


def is_baked(spec: TensorSpec) -> bool:
    return spec.preprocess is not None and spec.preprocess.description.startswith(BAKED_PREFIX)


def channel_params(spec: TensorSpec) -> tuple[float, np.ndarray, np.ndarray]:
    """``(scale, mean[C], std[C])`` of an image input's preprocessing (empty mean/std: 0 and 1)."""
    pre = spec.preprocess
    assert pre is not None
    channels = _channels(spec)
    mean = np.asarray(pre.mean or (0.0,), np.float32)
    std = np.asarray(pre.std or (1.0,), np.float32)
    mean = np.broadcast_to(mean, (channels,)).astype(np.float32) if mean.size == 1 else mean
    std = np.broadcast_to(std, (channels,)).astype(np.float32) if std.size == 1 else std
    return float(pre.scale), mean, std


def _channels(spec: TensorSpec) -> int:
    return int(spec.shape[1] if _layout(spec) == "NCHW" else spec.shape[3])


def _check(source: ModelSource) -> list[TensorSpec]:
    """The inputs to bake; one :class:`InputError` for any that cannot be."""
    where = f"--input of {source.uri}" if source.kind in ("onnx", "pt2", "factory", "hf") else source.uri
    targets: list[TensorSpec] = []
    for spec in source.inputs:
        if is_baked(spec):
            continue
        if not is_image_input(spec):
            continue
        if spec.preprocess is None or not isinstance(spec.shape[1 if _layout(spec) == "NCHW" else 3], int):
            raise InputError(
                f"--bake-preprocess: input '{spec.name}' ({spec.shape_str()}:{spec.dtype}) has no preprocessing "
                f"(scale/mean/std) known from {where}",
                hint="ONNX, .pt2, factory and Hugging Face sources carry none: pass a ModelSource whose TensorSpec "
                     "has a Preprocess, or export without --bake-preprocess",
            )
        _, mean, std = channel_params(spec)
        channels = _channels(spec)
        if mean.size != channels or std.size != channels or not np.all(std != 0):
            raise InputError(f"--bake-preprocess: input '{spec.name}' has {channels} channel(s) but mean "
                             f"{list(mean)} / std {list(std)} (std must be non-zero, one value or one per channel)")
        targets.append(spec)
    if not targets:
        names = ", ".join(f"'{s.name}' ({s.shape_str()}:{s.dtype})" for s in source.inputs)
        raise InputError(f"--bake-preprocess: {source.uri} has no float image input to bake (inputs: {names})")
    return targets


def baked_spec(spec: TensorSpec) -> TensorSpec:
    """``uint8 [N, H, W, C]`` with an identity preprocessing that records what was baked."""
    pre = spec.preprocess
    assert pre is not None
    scale, mean, std = channel_params(spec)
    if _layout(spec) == "NCHW":
        n, c, h, w = spec.shape
    else:
        n, h, w, c = spec.shape
    what = (f"uint8 NHWC -> float32, (x * {scale:g} - mean {[float(v) for v in mean]}) / std "
            f"{[float(v) for v in std]}" + (", NHWC -> NCHW" if _layout(spec) == "NCHW" else "")
            + (f" ({pre.description})" if pre.description else ""))
    identity = Preprocess(scale=1.0, mean=(0.0,) * int(c), std=(1.0,) * int(c), description=BAKED_PREFIX + what)
    return TensorSpec(spec.name, (n, h, w, c), "uint8", "NHWC", identity, None)


def bake_preprocess(source: ModelSource, workdir: Path | None = None) -> ModelSource:
    """A new source whose image inputs are ``uint8`` NHWC with the preprocessing in the graph.

    Raises :class:`InputError` naming an image input without preprocessing (scale/mean/std).
    """
    targets = _check(source)
    originals = {s.name: s for s in targets}
    new_inputs = [baked_spec(s) if s.name in originals else s for s in source.inputs]
    recipe = {name: {"scale": channel_params(s)[0], "mean": channel_params(s)[1].tolist(),
                     "std": channel_params(s)[2].tolist(), "layout": _layout(s)} for name, s in originals.items()}
    sha = hashlib.sha256(f"{source.sha256}|bake-preprocess|{json.dumps(recipe, sort_keys=True)}".encode()).hexdigest()
    extra = {k: v for k, v in source.extra.items() if not k.startswith("_")}  # drop per-run caches (_onnx_cache)
    for key, value in list(extra.items()):
        if isinstance(value, Dataset):
            extra[key] = raw_pixels(value, list(originals.values()))
    extra[UNBAKED_KEY] = list(source.inputs)
    common: dict[str, Any] = {"sha256": sha, "inputs": new_inputs, "extra": extra, "exported_program": None}
    if source.torch_module is not None:
        module = BakedPreprocess(source.torch_module, source.inputs, set(originals))
        return replace(source, torch_module=module, onnx_path=None, **common)
    if source.onnx_path is not None:
        path = _bake_onnx(Path(source.onnx_path), list(originals.values()), new_inputs, workdir)
        return replace(source, onnx_path=path, **common)
    raise InputError(f"--bake-preprocess: {source.uri} has neither a torch module nor an ONNX file")


def _torch_module_class() -> type:
    import torch
    from torch import nn

    class _BakedPreprocess(nn.Module):
        """``uint8 NHWC`` -> float, ``* scale``, ``(x - mean) / std``, ``NHWC -> NCHW``, then the wrapped model."""

        def __init__(self, inner: Any, specs: Sequence[TensorSpec], baked: set[str]) -> None:
            super().__init__()
            self.inner = inner
            self.plan: list[tuple[str, bool]] = []  # (buffer prefix or "", to NCHW)
            for index, spec in enumerate(specs):
                if spec.name not in baked:
                    self.plan.append(("", False))
                    continue
                scale, mean, std = channel_params(spec)
                self.register_buffer(f"scale{index}", torch.tensor(scale, dtype=torch.float32))
                self.register_buffer(f"mean{index}", torch.from_numpy(mean.copy()))
                self.register_buffer(f"std{index}", torch.from_numpy(std.copy()))
                self.plan.append((str(index), _layout(spec) == "NCHW"))

        def forward(self, *inputs: Any) -> Any:
            args = []
            for x, (index, to_nchw) in zip(inputs, self.plan):
                if index:
                    x = x.to(torch.float32) * getattr(self, f"scale{index}")
                    x = (x - getattr(self, f"mean{index}")) / getattr(self, f"std{index}")
                    if to_nchw:
                        x = x.permute(0, 3, 1, 2)
                args.append(x)
            return self.inner(*args)

    return _BakedPreprocess


_MODULE_CLASS: type | None = None


def BakedPreprocess(inner: Any, specs: Sequence[TensorSpec], baked: set[str]) -> Any:  # noqa: N802 - a class factory
    """The torch wrapper (built lazily so importing this module does not import torch)."""
    global _MODULE_CLASS
    if _MODULE_CLASS is None:
        _MODULE_CLASS = _torch_module_class()
    return _MODULE_CLASS(inner, specs, baked).eval()


def _bake_onnx(
    path: Path, specs: Sequence[TensorSpec], new_inputs: Sequence[TensorSpec], workdir: Path | None = None
) -> Path:
    """A copy of the ONNX file at ``path`` with ``Cast -> Mul -> Sub -> Div -> Transpose`` before each baked input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))  # external data loaded: the copy is self-contained
    graph = model.graph
    by_name = {s.name: s for s in new_inputs}
    nodes, initializers = [], []
    for spec in specs:
        inner = f"{spec.name}__preprocessed"
        for node in graph.node:
            node.input[:] = [inner if name == spec.name else name for name in node.input]
        for output in graph.output:
            if output.name == spec.name:
                raise InputError(f"--bake-preprocess: input '{spec.name}' of {path} is also an output")
        scale, mean, std = channel_params(spec)
        prefix = f"{spec.name}__bake"
        initializers += [numpy_helper.from_array(np.asarray(scale, np.float32), f"{prefix}_scale"),
                         numpy_helper.from_array(mean.astype(np.float32), f"{prefix}_mean"),
                         numpy_helper.from_array(std.astype(np.float32), f"{prefix}_std")]
        to_nchw = _layout(spec) == "NCHW"
        nodes += [
            helper.make_node("Cast", [spec.name], [f"{prefix}_float"], to=TensorProto.FLOAT, name=f"{prefix}_cast"),
            helper.make_node("Mul", [f"{prefix}_float", f"{prefix}_scale"], [f"{prefix}_scaled"], name=f"{prefix}_mul"),
            helper.make_node("Sub", [f"{prefix}_scaled", f"{prefix}_mean"], [f"{prefix}_centred"], name=f"{prefix}_sub"),
            helper.make_node("Div", [f"{prefix}_centred", f"{prefix}_std"], [f"{prefix}_normed" if to_nchw else inner],
                             name=f"{prefix}_div"),
        ]
        if to_nchw:
            nodes.append(helper.make_node("Transpose", [f"{prefix}_normed"], [inner], perm=[0, 3, 1, 2],
                                          name=f"{prefix}_transpose"))
        for graph_input in graph.input:
            if graph_input.name == spec.name:
                baked = by_name[spec.name]
                dims = [d if isinstance(d, int) else str(d) for d in baked.shape]
                graph_input.CopyFrom(helper.make_tensor_value_info(spec.name, TensorProto.UINT8, dims))
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    graph.initializer.extend(initializers)
    return save_rewritten(model, path, workdir, "baked")


def load_baked_dataset(path: str | Path, source: ModelSource, *, require_labels: bool) -> Any:
    """An ``.npz``/``.npy`` file for a baked source: ``uint8`` image arrays are taken as raw NHWC pixels;
    anything else is read in the model's float layout and converted (:func:`raw_pixels`)."""
    from edgepack.data.dataset import load_dataset

    unbaked = source.extra.get(UNBAKED_KEY) or source.inputs
    baked_names = {s.name for s in source.inputs if is_baked(s)}
    if _file_is_uint8(Path(path), baked_names):
        return load_dataset(path, source.inputs, require_labels=require_labels)
    data = load_dataset(path, unbaked, require_labels=require_labels)
    return raw_pixels(data, [s for s in unbaked if s.name in baked_names])


def _file_is_uint8(path: Path, names: set[str]) -> bool:
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False).dtype == np.uint8
        with np.load(path, allow_pickle=False) as npz:
            keys = [k for k in npz.files if k in names] or [k for k in npz.files if k not in ("labels", "label", "y")]
            return bool(keys) and all(npz[k].dtype == np.uint8 for k in keys)
    except (ValueError, OSError, EOFError, Exception):  # noqa: BLE001 - load_dataset reports unreadable files
        return False
