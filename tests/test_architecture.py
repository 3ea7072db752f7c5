"""A new runtime is one package: nothing outside ``edgepack/exporters/`` names a runtime or an artifact format.

The check reads every ``edgepack/**/*.py`` outside ``edgepack/exporters/`` with :mod:`ast` and collects its
string constants (f-string parts included; docstrings and comments are prose and are skipped). A constant
that *equals* one of :data:`RUNTIME_LITERALS` fails the test with ``file:line``. The set holds what selects a
runtime: runtime keys, artifact format names, op vocabularies, the runtime packages the bench and packaging
pin, and the device build scripts. Placement, ``check``, the host runner and ``package`` ask
:mod:`edgepack.exporters.registry` instead, which answers from each exporter's declared ``Capabilities``.

Not in the set, on purpose:

- ``"onnx"``: the hub format every source passes through (``ModelSource`` kinds, ``export_onnx``, the
  placement fallback to the hub graph); it is edgepack's own interchange format, not a runtime choice.
- third-party library names used only to quiet a library's logging and warnings (``cli._quiet_toolchains``:
  ``"coremltools"``, ``"tensorflow"``, ``"absl"``): they choose nothing, and silencing an absent library is
  a no-op.

"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edgepack.exporters import registry
from edgepack.exporters.base import Exporter

PACKAGE = Path(__file__).resolve().parents[1] / "edgepack"
EXPORTERS = PACKAGE / "exporters"

RUNTIME_LITERALS = frozenset({
    # runtime keys (profiles' `runtime`, entry-point names)
    "onnxruntime", "openvino", "tflite", "tensorrt", "edgetpu", "coreml",
    # artifact formats and op vocabularies other than the hub's
    "mlpackage", "onnx-qdq", "openvino-ir", "tflite-edgetpu", "mil",
    # runtime packages pinned by the bench and the deliverables
    "ai-edge-litert", "ai_edge_litert", "ai_edge_litert.interpreter", "litert",
    # device build scripts
    "build_engine.sh", "compile_edgetpu.sh",
}) | {  # and whatever a plug-in runtime declares: its key, its formats, its op vocabulary
    name for runtime, cls in registry.exporter_classes().items()
    for name in (runtime, *cls.artifact_formats, cls.capabilities.op_vocabulary or "") if name not in ("", "onnx")
}  # fmt: skip



def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def _runtime_literals() -> dict[tuple[str, str], list[int]]:
    """``{(path relative to edgepack/, literal): [lines]}`` outside ``edgepack/exporters/``."""
    hits: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(EXPORTERS):
            continue
        for line, value in _string_constants(path):
            if value in RUNTIME_LITERALS:
                hits.setdefault((path.relative_to(PACKAGE).as_posix(), value), []).append(line)
    return hits


def test_no_runtime_or_format_literal_outside_exporters() -> None:
    hits = _runtime_literals()
    offending = [f"edgepack/{path}:{line}: {value!r}" for (path, value), lines in sorted(hits.items())
                 for line in sorted(set(lines))]
    assert not offending, ("runtime/format literals outside edgepack/exporters/ (declare them in the exporter's "
                           "Capabilities and ask edgepack.exporters.registry):\n" + "\n".join(offending))


def test_the_scan_sees_literals_and_skips_docstrings(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""tflite in a docstring."""\n\n\ndef f():\n    """coreml too."""\n'
                      '    # tensorrt in a comment\n    return {"x": "tflite"}, f"{1} openvino"\n')
    assert _string_constants(sample) == [(7, "x"), (7, "tflite"), (7, " openvino")]


def test_exporters_is_one_package_per_runtime() -> None:
    """Only the interface and the registry sit at the top of ``edgepack/exporters/``; no shim modules."""
    modules = sorted(p.name for p in EXPORTERS.glob("*.py"))
    assert modules == ["__init__.py", "base.py", "registry.py"], modules
    for runtime, entry in registry.available_runtimes().items():
        module = entry.value.split(":")[0]
        assert module.startswith("edgepack.exporters.") and module.count(".") == 3, (runtime, entry.value)
        assert (EXPORTERS / module.split(".")[2]).is_dir(), (runtime, entry.value)


@pytest.mark.parametrize("runtime", sorted(registry.available_runtimes()))
def test_declared_capabilities_are_coherent(runtime: str) -> None:
    cls: type[Exporter] = registry.exporter_classes()[runtime]
    caps = cls.capabilities
    assert "capabilities" in vars(cls), f"{runtime} inherits another runtime's capabilities; declare its own"
    assert caps.graph_formats <= set(cls.artifact_formats), (runtime, caps.graph_formats)
    assert not caps.graph_formats or caps.op_vocabulary, runtime
    assert {p.format for p in caps.packaging} <= set(cls.artifact_formats), runtime
    if caps.templates is not None:
        assert caps.templates.is_dir() and caps.templates.is_relative_to(EXPORTERS / cls.__module__.split(".")[2])
    if caps.bench is not None:
        assert caps.bench.distribution in cls.distributions, runtime


def test_every_packaged_snippet_template_resolves() -> None:
    from edgepack.package.render import environment

    for path, (template, formats) in registry.snippets().items():
        assert formats, path
        environment().get_template(template)


def test_every_python_packaging_brings_its_runner_fragments() -> None:
    # The generated Python runner and snippet include python/open_<key>.py.j2 and snippets/python/run_<key>.py.j2
    # for each packaged runtime: a runtime that packages for python must ship both and name its module.
    from edgepack.package.render import environment

    for runtime, cls in registry.exporter_classes().items():
        for facts in cls.capabilities.packaging:
            if facts.platform != "python":
                continue
            assert facts.python_runtime and facts.python_module and facts.distribution, (runtime, facts)
            environment().get_template(f"python/open_{facts.python_runtime}.py.j2")
            environment().get_template(f"snippets/python/run_{facts.python_runtime}.py.j2")



def test_no_two_template_folders_ship_the_same_template(tmp_path: Path) -> None:
    # Jinja's FileSystemLoader serves the first folder's file, so a clash would package one runtime's code for
    # another depending on plug-in order (it did: ExecuTorch's gradle file shadowed LiteRT's).
    from edgepack.package.render import TEMPLATES, template_clashes

    assert template_clashes([TEMPLATES, *registry.template_dirs()]) == {}
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "android").mkdir(parents=True)
        (folder / "android" / "Runner.kt.j2").write_text("x")
    assert template_clashes([a, b]) == {"android/Runner.kt.j2": [a, b]}


def test_every_app_packaging_ships_its_wrapper_templates() -> None:
    from edgepack.package.render import environment

    wrappers = {"android": ("Runner.kt.j2", "dependencies.gradle.kts.j2", "README.md.j2")}
    for runtime, cls in registry.exporter_classes().items():
        for facts in cls.capabilities.packaging:
            if facts.platform not in wrappers:
                continue
            assert facts.app_templates and facts.app_library and facts.distribution, (runtime, facts)
            for name in wrappers[facts.platform]:
                environment().get_template(f"{facts.app_templates}/{name}")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, name: str, modules: set[str]) -> set[str]:
    """The edgepack modules ``path`` imports anywhere in its body (function-level imports too, as import-linter and
    grimp count them; ``if TYPE_CHECKING:`` blocks are skipped): ``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def _import_cycles(package_dir: Path) -> list[list[str]]:
    """Strongly connected components (more than one module) of the package's import graph (Tarjan)."""
    root = package_dir.parent
    files = {_module_name(p, root): p for p in package_dir.rglob("*.py")}
    graph = {name: _imported_modules(path, name, set(files)) for name, path in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def test_no_import_cycles() -> None:
    assert _import_cycles(PACKAGE) == []


def test_the_cycle_check_finds_a_function_level_cycle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from pkg import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    assert _import_cycles(package) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("script", sorted(str(p.relative_to(PACKAGE.parent)) for folder in ("benchmarks", "scripts")
                                          for p in (PACKAGE.parent / folder).glob("*.py")))
def test_benchmarks_and_scripts_import_against_the_current_api(script: str) -> None:
    # They run outside the test suite (benchmarks take minutes), so a renamed function would break them silently.
    import importlib.util
    import sys

    path = PACKAGE.parent / script
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"_checked_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
        sys.modules.pop(f"_checked_{path.stem}", None)
    assert callable(getattr(module, "main", None)), f"{script} has no main()"
