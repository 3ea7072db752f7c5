"""TorchScript archives (``.jit``, or ``.pt``/``.pth``/``.ts`` written by ``torch.jit.save``) as sources.

An archive is recognised by its zip layout (``<root>/code/`` + ``<root>/constants.pkl``) *before* anything
reads it, and loaded with ``torch.jit.load`` only: a pickled ``.pt`` (a state dict or a whole pickled module)
is refused with one line, never unpickled.

``forward`` may take non-tensor arguments (``forward(self, x: Tensor, sr: int)``, Silero VAD). Each one is
frozen to a constant (``--input sr:int=16000``, or the argument's default) by a small generated TorchScript
module (``Bound``), whose ``forward`` takes the tensors only; that module is what the ONNX hub exports
(``torch.onnx`` of a ScriptModule keeps control flow, so ``if sr == 16000`` folds to the chosen branch).

Two rewrites make such modules exportable and their calls repeatable:

* **state**: attributes that ``forward`` assigns (a recurrent state, a context buffer) are saved before the
  call and restored after it, so every call starts from the state the archive was saved with; the exported
  graph freezes them to those values (a stateful streaming model exports as one call from its saved state);
* **int truthiness**: ``bool(n)`` on an ``int`` becomes ``n != 0`` (same meaning; the ONNX exporter
  refuses ``not`` of an integer).
"""

from __future__ import annotations

import functools
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgepack.errors import InputError, SourceError
from edgepack.models.source import ConstantInput, TensorSpec

SUFFIXES = (".jit", ".pt", ".pth", ".ts", ".torchscript")
"""File suffixes checked for a TorchScript archive."""

_CONSTANT_TYPES = {"int": "int", "float": "float", "bool": "bool"}
"""TorchScript argument types that ``--input NAME:TYPE=VALUE`` can freeze (schema type -> constant dtype)."""


def is_torchscript_archive(path: Path) -> bool:
    """True when ``path`` is a zip archive laid out as ``torch.jit.save`` writes it (read without unpickling)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    roots = {name.split("/", 1)[0] for name in names if "/" in name}
    return any(f"{root}/constants.pkl" in names and any(n.startswith(f"{root}/code/") for n in names) for root in roots)


def check_archive(path: Path) -> None:
    """Refuse, in one line, a file that is not a TorchScript archive (a pickled ``.pt`` above all)."""
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    if is_torchscript_archive(path):
        return
    kind = "a pickled PyTorch file (state dict or pickled module)" if _is_pickle(path) else "not a TorchScript archive"
    raise SourceError(
        f"{path}: {kind}; edgepack loads TorchScript archives with torch.jit.load and never unpickles model files",
        hint="save it with torch.jit.save(torch.jit.script(model), PATH), export a .pt2 with torch.export, "
        "or give file.py:factory with --weights for a state dict",
    )


def _is_pickle(path: Path) -> bool:
    """A ``torch.save`` file: a zip with ``data.pkl`` (the default since torch 1.6) or a raw pickle stream."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    with path.open("rb") as handle:
        return handle.read(1) == b"\x80"  # pickle protocol 2+ opcode PROTO


def load_archive(path: Path) -> Any:
    """``torch.jit.load`` of a checked archive, on the CPU, in eval mode."""
    import torch

    check_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.14 marks torch.jit.load deprecated
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - corrupt or incompatible archives
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise SourceError(f"{path}: torch.jit.load failed: {first}") from None
    return module.eval()


def forward_arguments(module: Any) -> list[tuple[str, str, Any]]:
    """``(name, type, default)`` of each ``forward`` argument after ``self`` (default ``...`` when none)."""
    schema = module.forward.schema
    out = []
    for argument in schema.arguments[1:]:
        default = argument.default_value if argument.has_default_value() else ...
        out.append((argument.name, str(argument.type), default))
    return out


def split_inputs(
    path: Path, arguments: Sequence[tuple[str, str, Any]], given: Sequence[TensorSpec | ConstantInput]
) -> tuple[list[TensorSpec], list[ConstantInput]]:
    """Match ``--input`` entries to ``forward``'s arguments: tensor shapes for ``Tensor`` arguments, constants
    (given or defaulted) for the others; every mismatch is one :class:`InputError` naming the argument."""
    names = [name for name, _, _ in arguments]
    by_name = {entry.name: entry for entry in given}
    tensor_args = [name for name, kind, _ in arguments if kind == "Tensor"]
    given_tensors = [entry for entry in given if isinstance(entry, TensorSpec)]
    if len(tensor_args) == 1 and len(given_tensors) == 1 and given_tensors[0].name not in names:
        by_name.pop(given_tensors[0].name)  # one tensor: --input may rename it (the artifact's input name)
        by_name[tensor_args[0]] = given_tensors[0]
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise InputError(f"--input names {unknown} are not forward arguments of {path}",
                         hint=f"forward({', '.join(f'{n}: {k}' for n, k, _ in arguments)})")
    tensors: list[TensorSpec] = []
    constants: list[ConstantInput] = []
    missing: list[str] = []
    for name, kind, default in arguments:
        entry = by_name.get(name)
        if kind == "Tensor":
            if isinstance(entry, ConstantInput):
                raise InputError(f"--input {entry.text()}: forward argument '{name}' of {path} is a Tensor",
                                 hint=f"give its shape: --input {name}:1x...[:DTYPE]")
            if entry is None:
                missing.append(f"{name}:DIMS")
            else:
                tensors.append(entry)
            continue
        expected = _CONSTANT_TYPES.get(kind)
        if isinstance(entry, TensorSpec):
            raise InputError(f"--input {entry.name}:{entry.shape_str()}: forward argument '{name}' of {path} is "
                             f"{kind}, not a Tensor", hint=f"freeze it: --input {name}:{expected or kind}=VALUE")
        if entry is None:
            if default is ...:
                missing.append(f"{name}:{expected or kind}=VALUE")
            continue  # left to its default
        if expected is None:
            raise InputError(f"--input {entry.text()}: forward argument '{name}' of {path} has type {kind}; "
                             "only int, float and bool arguments can be frozen")
        if entry.dtype != expected:
            raise InputError(f"--input {entry.text()}: forward argument '{name}' of {path} is {kind}",
                             hint=f"--input {name}:{expected}=VALUE")
        constants.append(entry)
    if missing:
        raise InputError(f"{path}: forward argument(s) need --input: {', '.join(missing)}",
                         hint="e.g. --input x:1x512 --input sr:int=16000 (tensors: NAME:DIMS[:DTYPE]; "
                         "int/float/bool arguments: NAME:TYPE=VALUE)")
    if not tensors:
        raise InputError(f"{path}: forward takes no tensor argument; nothing to export")
    return tensors, constants


def _mutated_attributes(graph: Any) -> list[tuple[str, ...]]:
    """Attribute paths from ``self`` (``("inner", "_state")``) that the inlined ``graph`` assigns."""
    self_value = next(iter(graph.inputs()))
    paths: list[tuple[str, ...]] = []

    def path_of(value: Any) -> tuple[str, ...] | None:
        if value is self_value:
            return ()
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        parent = path_of(node.inputsAt(0))
        return None if parent is None else (*parent, node.s("name"))

    def visit(block: Any) -> None:
        for node in block.nodes():
            for inner in node.blocks():
                visit(inner)
            if node.kind() == "prim::SetAttr":
                owner = path_of(node.inputsAt(0))
                if owner is None:
                    raise SourceError("a TorchScript forward assigns an attribute of an object it did not get from "
                                      "self; edgepack cannot freeze its state")
                path = (*owner, node.s("name"))
                if path not in paths:
                    paths.append(path)

    visit(graph)
    return paths


def _int_truthiness_to_comparisons(graph: Any) -> int:
    """Rewrite ``aten::Bool(int)`` as ``aten::ne(int, 0)`` everywhere in ``graph``; return how many."""
    import torch

    count = 0
    for node in list(graph.findAllNodes("aten::Bool")):
        value = node.inputsAt(0)
        if value.type().kind() != "IntType":
            continue
        zero = graph.insertConstant(0)
        zero.node().moveBefore(node)
        compare = graph.create("aten::ne", [value, zero])
        compare.insertBefore(node)
        compare.output().setType(torch._C.BoolType.get())
        node.output().replaceAllUsesWith(compare.output())
        node.destroy()
        count += 1
    return count


def _literal(constant: ConstantInput) -> str:
    return repr(constant.value) if constant.dtype != "bool" else ("True" if constant.value else "False")


def bind(module: Any, tensors: Sequence[TensorSpec], constants: Sequence[ConstantInput],
         arguments: Sequence[tuple[str, str, Any]]) -> tuple[Any, list[str]]:
    """A ScriptModule whose ``forward(*tensors)`` calls ``module`` with ``constants`` frozen in, restoring
    the state ``module`` assigns after each call (see the module docstring), and the restored attributes."""
    import torch

    probe = module.forward.graph.copy()
    torch._C._jit_pass_inline(probe)
    state = [("inner", *path) for path in _mutated_attributes(probe)]
    tensor_arg_names = [name for name, kind, _ in arguments if kind == "Tensor"]
    values = {name: f"t{i}" for i, name in enumerate(tensor_arg_names)}
    values.update({c.name: _literal(c) for c in constants})
    params = ", ".join(f"t{i}: Tensor" for i in range(len(tensors)))
    call = ", ".join(f"{name}={values[name]}" for name, _, _ in arguments if name in values)
    lines = [f"def forward(self, {params}):"]
    lines += [f"    saved_{i} = self.{'.'.join(path)}" for i, path in enumerate(state)]
    lines.append(f"    result = self.inner({call})")
    lines += [f"    self.{'.'.join(path)} = saved_{i}" for i, path in enumerate(state)]
    lines.append("    return result")
    bound = _bound_class()(module)
    try:
        bound.define("\n".join(lines) + "\n")
    except Exception as exc:  # noqa: BLE001 - TorchScript compile errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise SourceError(f"cannot bind the constant arguments of this TorchScript forward: {first}") from None
    torch._C._jit_pass_inline(bound.forward.graph)
    _int_truthiness_to_comparisons(bound.forward.graph)
    return bound.eval(), [".".join(path[1:]) for path in state]


@functools.cache
def _bound_class() -> type:
    """:class:`Bound`, defined on first use (torch is imported lazily)."""
    import torch

    class Bound(torch.jit.ScriptModule):
        """The archive's module as ``inner``; :func:`bind` defines a ``forward`` over the tensor arguments."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

    return Bound
