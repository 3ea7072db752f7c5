"""Turn a source string into a :class:`ModelSource`.

Dispatch is by prefix (``torchvision:``, ``timm:``, ``hf:``, ``demo:``) or by file suffix (``.onnx``,
``.pt2``, ``.py:factory``, TorchScript ``.jit``/``.pt``/``.pth``/``.ts``: :mod:`edgepack.models.torchscript`);
each loader infers the input specs where the source knows them.
Torch modules are built with a fixed seed so random-init architectures are reproducible.
"""

from __future__ import annotations

import hashlib

import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgepack.errors import InputError, SourceError
from edgepack.hashing import file_sha256, module_sha256
from edgepack.models.pretrained import RANDOM_WEIGHTS, Pretrained, create_timm_pretrained, load_torchvision_weights
from edgepack.models.source import ConstantInput, ModelSource, Preprocess, TensorSpec

IMAGENET = Preprocess(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), description="RGB 0..255")
SEED = 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if text and text[0].startswith("The following operation failed in the TorchScript interpreter"):
        text = [text[-1]]  # TorchScript puts the model's own exception (builtins.ValueError: ...) last
    return (text[0] if text else type(exc).__name__)[:240]


def _seeded() -> None:
    import torch

    torch.manual_seed(SEED)


def _load_weights(module: Any, weights: Path) -> None:
    """Load a state dict from ``.safetensors`` or a ``weights_only`` torch file into ``module``."""
    import torch

    if not weights.is_file():
        raise SourceError(f"{weights}: weights file not found")
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and corrupt files alike
        raise SourceError(
            f"{weights}: cannot load weights safely: {_first_line(exc)}",
            hint="use .safetensors or a plain state-dict .pt (pickled code is refused)",
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SourceError(f"{weights}: expected a state dict, found {type(state).__name__}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SourceError(f"{weights}: weights do not fit the model: {_first_line(exc)}") from None


def _output_specs(module: Any, inputs: Sequence[TensorSpec], names: Sequence[str] | None = None) -> list[TensorSpec]:
    """Run ``module`` once on synthetic inputs to learn output shapes; reject inputs it cannot take."""
    import torch

    from edgepack.models.sample import example_inputs

    arrays = example_inputs(inputs, batch=1, seed=SEED)
    try:
        with torch.no_grad():
            result = module(*(torch.from_numpy(arrays[s.name]) for s in inputs))
    except Exception as exc:  # noqa: BLE001 - any model error means the input spec does not fit
        shapes = ", ".join(f"{s.name}:{s.shape_str()}" for s in inputs)
        raise InputError(f"the model rejects input(s) {shapes}: {_first_line(exc)}", hint="check --input") from None
    tensors = _flatten_outputs(result)
    batch_symbolic = bool(inputs and inputs[0].shape) and not isinstance(inputs[0].shape[0], int)
    specs = []
    for index, tensor in enumerate(tensors):
        shape: list[int | str] = list(tensor.shape)
        if batch_symbolic and shape and shape[0] == 1:
            shape[0] = inputs[0].shape[0]
        name = names[index] if names and index < len(names) else ("output" if len(tensors) == 1 else f"output_{index}")
        specs.append(TensorSpec(name=name, shape=tuple(shape), dtype=str(tensor.dtype).removeprefix("torch.")))
    return specs


def _flatten_outputs(result: Any) -> list[Any]:
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if hasattr(result, "to_tuple"):
        result = result.to_tuple()
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, (list, tuple)):
        out: list[Any] = []
        for item in result:
            out.extend(_flatten_outputs(item))
        return out
    raise SourceError(f"model output of type {type(result).__name__} is not a tensor or a tuple of tensors")


def _tensor_inputs(given: Sequence[TensorSpec | ConstantInput], uri: str) -> list[TensorSpec]:
    """``given`` when it holds tensor specs only; constants (``NAME:TYPE=VALUE``) are for TorchScript sources."""
    constants = [entry.text() for entry in given if isinstance(entry, ConstantInput)]
    if constants:
        raise InputError(f"--input {', '.join(constants)}: constant arguments apply to TorchScript sources, not {uri}",
                         hint="give tensor inputs as NAME:DIMS[:DTYPE]")
    return list(given)


def _merge_inputs(inferred: list[TensorSpec], given: Sequence[TensorSpec], uri: str) -> list[TensorSpec]:
    """Apply ``--input`` overrides (by name, or by position for a single input)."""
    if not given:
        if not inferred:
            raise InputError(f"{uri}: the input shape is unknown", hint="pass --input NAME:1x3x224x224:float32")
        return inferred
    if not inferred:
        return list(given)
    if len(given) == 1 and len(inferred) == 1:
        base = inferred[0]
        spec = given[0]
        return [TensorSpec(spec.name, spec.shape, spec.dtype, base.layout, base.preprocess)]
    by_name = {s.name: s for s in given}
    unknown = sorted(set(by_name) - {s.name for s in inferred})
    if unknown:
        raise InputError(f"--input names {unknown} are not inputs of {uri}", hint=f"inputs: {[s.name for s in inferred]}")
    return [
        TensorSpec(s.name, by_name[s.name].shape, by_name[s.name].dtype, s.layout, s.preprocess) if s.name in by_name else s
        for s in inferred
    ]


class _TupleOutputs:
    """Wraps a module whose forward returns a ModelOutput/dict so tracing sees plain tensors."""

    def __new__(cls, module: Any) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: Any) -> tuple[Any, ...]:
                return tuple(_flatten_outputs(self.inner(*args)))

        return Wrapper(module).eval()


def _torch_source(kind: str, uri: str, name: str, module: Any, inputs: list[TensorSpec], output_names=None, **extra: Any) -> ModelSource:
    _tensor_inputs(inputs, uri)
    try:
        module = module.eval()
    except NotImplementedError:  # modules of torch.export programs are already in inference form
        pass
    outputs = _output_specs(module, inputs, output_names)
    return ModelSource(
        kind=kind,  # type: ignore[arg-type]
        uri=uri,
        name=name,
        sha256=module_sha256(module),
        inputs=inputs,
        outputs=outputs,
        torch_module=module,
        **extra,
    )


def _chosen_weights(module: Any, weights: Path | None, random_weights: bool) -> Pretrained | None:
    """The weights the user chose instead of the pretrained default (a file, or none), or ``None``."""
    if weights is not None:
        _load_weights(module, weights)
        return Pretrained(f"file {weights.name}")
    return Pretrained(RANDOM_WEIGHTS) if random_weights else None


def _load_torchvision(
    name: str, uri: str, weights: Path | None, given: Sequence[TensorSpec], random_weights: bool = False
) -> ModelSource:
    import torchvision

    if name not in torchvision.models.list_models():
        import difflib

        close = difflib.get_close_matches(name, torchvision.models.list_models(), n=3)
        raise SourceError(f"{uri}: unknown torchvision model", hint=f"did you mean {', '.join(close)}?" if close else None)
    _seeded()
    module = torchvision.models.get_model(name, weights=None)
    origin = _chosen_weights(module, weights, random_weights) or load_torchvision_weights(module, name, uri)
    side = 299 if name.startswith("inception") else 224
    inferred = [TensorSpec("input", ("batch", 3, side, side), "float32", "NCHW", IMAGENET)]
    out_name = ["logits"] if name in torchvision.models.list_models(torchvision.models) else None
    source = _torch_source("torchvision", uri, name, module, _merge_inputs(inferred, given, uri), out_name)
    source.weights, source.labels = origin.description, origin.labels
    return source


def _load_timm(
    name: str, uri: str, weights: Path | None, given: Sequence[TensorSpec], random_weights: bool = False
) -> ModelSource:
    import timm

    _seeded()
    if weights is None and not random_weights:
        module, origin = create_timm_pretrained(name, uri)
    else:
        try:
            module = timm.create_model(name, pretrained=False)
        except RuntimeError as exc:
            raise SourceError(f"{uri}: {_first_line(exc)}", hint="run timm.list_models() for names") from None
        origin = _chosen_weights(module, weights, random_weights)
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    preprocess = Preprocess(
        scale=1 / 255,
        mean=tuple(cfg.get("mean", IMAGENET.mean)),
        std=tuple(cfg.get("std", IMAGENET.std)),
        description=f"timm pretrained_cfg ({cfg.get('interpolation', 'bicubic')}, crop_pct={cfg.get('crop_pct', 'n/a')})",
    )
    inferred = [TensorSpec("input", ("batch", channels, height, width), "float32", "NCHW", preprocess)]
    source = _torch_source("timm", uri, name, module, _merge_inputs(inferred, given, uri), ["logits"])
    source.weights, source.labels = origin.description, origin.labels
    return source


def _load_factory(path: Path, factory: str, uri: str, weights: Path | None, given: Sequence[TensorSpec]) -> ModelSource:
    if not path.is_file():
        raise SourceError(f"{path}: python file not found")
    module_name = f"edgepack_user_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SourceError(f"{path}: cannot import as a python module")
    py_module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = py_module
    try:
        _seeded()
        spec.loader.exec_module(py_module)
        build: Callable[[], Any] | None = getattr(py_module, factory, None)
        if not callable(build):
            raise SourceError(f"{uri}: '{factory}' is not a function in {path}")
        model = build()
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code
        raise SourceError(f"{uri}: the factory failed: {type(exc).__name__}: {_first_line(exc)}") from None
    finally:
        sys.modules.pop(module_name, None)
    import torch

    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"{uri}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, weights)
    inferred = list(getattr(py_module, "EDGEPACK_INPUTS", []) or [])
    source = _torch_source("factory", uri, f"{path.stem}-{factory}", model, _merge_inputs(inferred, given, uri))
    source.code_sha256 = file_sha256(path)
    return source


_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}


def _load_onnx(path: Path, uri: str, given: Sequence[TensorSpec]) -> ModelSource:
    import onnx

    if not path.is_file():
        raise SourceError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf errors
        raise SourceError(f"{path}: not a valid ONNX model: {_first_line(exc)}", hint="re-export it") from None
    external = _external_data_files(model, path)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - checker errors
        raise SourceError(f"{path}: not a valid ONNX model: {_first_line(exc)}", hint="re-export it") from None
    initializers = {init.name for init in model.graph.initializer}
    inferred: list[TensorSpec] = []
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        tensor_type = graph_input.type.tensor_type
        dims: list[int | str] = []
        for index, dim in enumerate(tensor_type.shape.dim):
            dims.append(dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else (dim.dim_param or f"d{index}"))
        dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise SourceError(f"{path}: input '{graph_input.name}' has an unsupported element type {tensor_type.elem_type}")
        layout = "NCHW" if len(dims) == 4 and dims[1] in (1, 3) else None
        inferred.append(TensorSpec(graph_input.name, tuple(dims), dtype, layout))
    inputs = _check_onnx_overrides(inferred, _merge_inputs(inferred, given, uri), path)
    outputs = _onnx_outputs(path, inputs)
    digest = hashlib.sha256("".join(file_sha256(f) for f in [path, *external]).encode()).hexdigest() if external else file_sha256(path)
    return ModelSource("onnx", uri, path.stem, digest, inputs, outputs, onnx_path=path)


def _external_data_files(model: Any, path: Path) -> list[Path]:
    """The external-data files an ONNX model names, each checked to lie inside the model's folder."""
    from onnx.external_data_helper import _get_all_tensors

    root = path.parent.resolve()
    files: list[Path] = []
    for tensor in _get_all_tensors(model):
        if tensor.data_location != 1:  # TensorProto.EXTERNAL
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(root):
            raise SourceError(
                f"{path}: tensor '{tensor.name}' points at external data '{location}' outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise SourceError(f"{path}: external data file '{location}' of tensor '{tensor.name}' not found")
        if target not in files:
            files.append(target)
    return files


def _check_onnx_overrides(inferred: list[TensorSpec], merged: list[TensorSpec], path: Path) -> list[TensorSpec]:
    by_name = {s.name: s for s in inferred}
    for spec in merged:
        base = by_name.get(spec.name)
        if base is None:
            raise InputError(f"--input {spec.name}: not an input of {path}", hint=f"inputs: {sorted(by_name)}")
        fixed_mismatch = len(base.shape) != len(spec.shape) or any(
            isinstance(b, int) and b != s for b, s in zip(base.shape, spec.shape)
        )
        if fixed_mismatch or base.dtype != spec.dtype:
            raise InputError(
                f"--input {spec.name}:{spec.shape_str()}:{spec.dtype} does not fit {path}, "
                f"which declares {base.shape_str()}:{base.dtype}"
            )
    return merged


def _onnx_outputs(path: Path, inputs: list[TensorSpec]) -> list[TensorSpec]:
    """Output specs from a real ONNX Runtime run (also proves the file runs)."""
    import onnxruntime as ort

    from edgepack.models.sample import example_inputs

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        arrays = example_inputs(inputs, batch=1, seed=SEED)
        results = session.run(None, arrays)
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"{path}: ONNX Runtime cannot run the model: {_first_line(exc)}") from None
    specs = []
    for meta, value in zip(session.get_outputs(), results):
        declared = meta.shape or []
        shape = tuple(d if isinstance(d, int) else (d or f"d{i}") for i, d in enumerate(declared)) or value.shape
        specs.append(TensorSpec(meta.name, tuple(shape), str(value.dtype)))
    return specs


def _load_pt2(path: Path, uri: str, given: Sequence[TensorSpec]) -> ModelSource:
    import torch

    if not path.is_file():
        raise SourceError(f"{path}: .pt2 file not found")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"{path}: not a torch.export program: {_first_line(exc)}") from None
    args = program.example_inputs[0] if program.example_inputs else ()
    placeholders = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    inferred = [
        TensorSpec(name, tuple(int(d) for d in arg.shape), str(arg.dtype).removeprefix("torch."))
        for name, arg in zip(placeholders, args)
        if isinstance(arg, torch.Tensor)
    ]
    inputs = _merge_inputs(inferred, given, uri)
    module = program.module()
    source = _torch_source("pt2", uri, path.stem, module, inputs, exported_program=program)
    source.sha256 = file_sha256(path)
    return source


def _load_torchscript(path: Path, uri: str, given: Sequence[TensorSpec | ConstantInput]) -> ModelSource:
    """A TorchScript archive, its non-tensor ``forward`` arguments frozen (:mod:`edgepack.models.torchscript`)."""
    from edgepack.models import torchscript

    module = torchscript.load_archive(path)
    arguments = torchscript.forward_arguments(module)
    tensors, constants = torchscript.split_inputs(path, arguments, given)
    bound, state = torchscript.bind(module, tensors, constants, arguments)
    source = _torch_source("torchscript", uri, path.stem, bound, tensors)
    source.sha256 = file_sha256(path)
    source.constants = constants
    source.extra["torchscript_state"] = state  # attributes restored after every call (frozen in the graph)
    return source


def _load_hf(directory: Path, uri: str, given: Sequence[TensorSpec]) -> ModelSource:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not (directory / "config.json").is_file():
        raise SourceError(f"{directory}: not a Hugging Face model folder (no config.json)")
    try:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        _seeded()
        model = AutoModel.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"{directory}: transformers cannot load it offline: {_first_line(exc)}") from None
    model.config.return_dict = False
    sequence = min(128, int(getattr(model.config, "max_position_embeddings", 128)))
    inferred = [
        TensorSpec("input_ids", ("batch", sequence), "int64"),
        TensorSpec("attention_mask", ("batch", sequence), "int64"),
    ]
    wrapped = _TupleOutputs(model)
    names = ["last_hidden_state", "pooler_output"]
    return _torch_source("hf", uri, _folder_name(directory), wrapped, _merge_inputs(inferred, given, uri), names)


def _folder_name(directory: Path) -> str:
    """The model's name from its folder; generic folder names defer to the parent folder."""
    resolved = directory.resolve()
    if resolved.name.lower() in ("model", "models", "checkpoint", "hf", "weights") and resolved.parent.name:
        return resolved.parent.name
    return resolved.name


def _load_demo(name: str, uri: str, given: Sequence[TensorSpec]) -> ModelSource:
    if name != "digits":
        raise SourceError(f"{uri}: unknown demo", hint="the embedded demo is demo:digits")
    if given:
        raise InputError("demo:digits has a fixed input (image:batchx1x8x8); drop --input")
    from edgepack.models.demo_digits import load_demo_source

    return load_demo_source()


def load_source(
    text: str, *, weights: str | Path | None = None, inputs: Sequence[TensorSpec | ConstantInput] = (),
    random_weights: bool = False,
) -> ModelSource:
    """Load a model from a source string (see module docstring) with optional weights and input specs.

    ``torchvision:`` / ``timm:`` names load their pretrained weights (:mod:`edgepack.models.pretrained`) unless
    ``weights`` names a file or ``random_weights`` asks for the untrained architecture."""
    weights_path = Path(weights) if weights is not None else None
    prefix, _, rest = text.partition(":")
    if random_weights and not (prefix in ("torchvision", "timm") and rest):
        raise InputError(f"--random-weights applies to torchvision:NAME and timm:NAME sources, not '{text}'")
    if prefix in ("torchvision", "timm", "hf", "demo") and rest:
        inputs = _tensor_inputs(inputs, text)
        if weights_path is not None and prefix in ("hf", "demo"):
            raise InputError(f"--weights is not used with {prefix}: sources")
        if random_weights and weights_path is not None:
            raise InputError("--weights and --random-weights exclude each other")
        if prefix == "torchvision":
            return _load_torchvision(rest, text, weights_path, inputs, random_weights)
        if prefix == "timm":
            return _load_timm(rest, text, weights_path, inputs, random_weights)
        if prefix == "hf":
            return _load_hf(Path(rest), text, inputs)
        return _load_demo(rest, text, inputs)
    factory_match = re.match(r"^(?P<path>.+\.py):(?P<factory>[A-Za-z_][A-Za-z0-9_]*)$", text)
    if factory_match:
        return _load_factory(Path(factory_match["path"]), factory_match["factory"], text, weights_path,
                             _tensor_inputs(inputs, text))
    path = Path(text)
    if weights_path is not None:
        raise InputError(f"--weights is not used with {path.suffix or 'file'} sources (the file holds the weights)")
    from edgepack.models.torchscript import SUFFIXES

    if path.suffix in SUFFIXES:
        return _load_torchscript(path, text, inputs)
    inputs = _tensor_inputs(inputs, text)
    if path.suffix == ".onnx":
        return _load_onnx(path, text, inputs)
    if path.suffix == ".pt2":
        return _load_pt2(path, text, inputs)
    if path.is_dir() and (path / "config.json").is_file():
        return _load_hf(path, text, inputs)
    raise InputError(
        f"'{text}' is not a model source",
        hint="use torchvision:NAME, timm:NAME, file.py:factory, model.onnx, model.pt2, a TorchScript model.jit/.pt, "
        "hf:DIR or demo:digits",
    )
