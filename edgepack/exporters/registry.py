"""Finds exporters through the ``edgepack.exporters`` entry-point group (runtime name -> class), and answers
what the rest of edgepack asks of them from their declared :class:`~edgepack.exporters.base.Capabilities`:
which exporter reads a graph for placement, which one ``check`` converts with, how the host bench loads a
runtime, and how each artifact format is packaged. Callers never name a runtime or a format."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from pathlib import Path

from edgepack.compress.recipe import Recipe
from edgepack.errors import UnsupportedError
from edgepack.exporters.base import Capabilities, Exporter, IsolatedEnv, Packaging

ENTRY_POINT_GROUP = "edgepack.exporters"


@lru_cache(maxsize=1)
def available_runtimes() -> dict[str, metadata.EntryPoint]:
    """Runtime name -> entry point, without importing any exporter module."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found and found[entry.name].value != entry.value:
            raise UnsupportedError(
                f"two exporters claim runtime '{entry.name}': {found[entry.name].value} and {entry.value}"
            )
        found[entry.name] = entry
    return found


def _exporter_class(runtime: str) -> type[Exporter]:
    entry = available_runtimes().get(runtime)
    if entry is None:
        known = ", ".join(sorted(available_runtimes())) or "none"
        raise UnsupportedError(
            f"runtime '{runtime}' is not yet supported by this edgepack build", hint=f"supported runtimes: {known}"
        )
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Exporter)) or cls.runtime != runtime:
        raise UnsupportedError(f"entry point '{entry.value}' does not provide an Exporter for runtime '{runtime}'")
    return cls


def get_exporter(runtime: str) -> Exporter:
    """Instantiate the exporter for ``runtime`` or raise a clear "not yet supported" error."""
    return _exporter_class(runtime)()


@lru_cache(maxsize=1)
def exporter_classes() -> dict[str, type[Exporter]]:
    """Every installed exporter class, by runtime name in sorted order (imports the exporter modules; their
    toolchains stay unimported)."""
    return {runtime: _exporter_class(runtime) for runtime in sorted(available_runtimes())}


def capabilities(runtime: str) -> Capabilities | None:
    """What the exporter of ``runtime`` declares; ``None`` when no installed exporter serves ``runtime``."""
    cls = exporter_classes().get(runtime)
    return cls.capabilities if cls is not None else None


def op_vocabularies() -> frozenset[str]:
    """The op vocabularies installed exporters declare (what a profile's ``op_vocabulary`` may name)."""
    return frozenset(c.capabilities.op_vocabulary for c in exporter_classes().values() if c.capabilities.op_vocabulary)


def graph_reader(fmt: str, vocabulary: str) -> Exporter | None:
    """An exporter whose :meth:`~Exporter.graph_ops` reads artifacts of format ``fmt`` in ``vocabulary``
    (several may: they read it alike); ``None`` when none does."""
    for cls in exporter_classes().values():
        if cls.capabilities.op_vocabulary == vocabulary and fmt in cls.capabilities.graph_formats:
            return cls()
    return None


def check_exporter(vocabulary: str, runtime: str, recipe: Recipe) -> Exporter:
    """The exporter whose ``recipe`` conversion ``check`` reads for a profile of ``runtime`` with op tables in
    ``vocabulary``: the profile's own when its graphs are in that vocabulary and it accepts ``recipe``, else the
    first other exporter that does (the Edge TPU, full-integer only, is checked on an fp32 TFLite conversion),
    else the profile's own (its refusal is the error)."""
    own = get_exporter(runtime)
    candidates = [own] + [cls() for name, cls in exporter_classes().items() if name != runtime]
    for exporter in candidates:
        if exporter.capabilities.op_vocabulary == vocabulary and exporter.refusal(recipe) is None:
            return exporter
    return own


@lru_cache(maxsize=1)
def _packaging() -> dict[tuple[str, str], Packaging]:
    found: dict[tuple[str, str], tuple[str, Packaging]] = {}
    for runtime, cls in exporter_classes().items():
        for entry in cls.capabilities.packaging:
            key = (entry.format, entry.platform)
            if key in found:
                raise UnsupportedError(f"exporters '{found[key][0]}' and '{runtime}' both package format "
                                       f"'{entry.format}' for platform '{entry.platform}'")
            found[key] = (runtime, entry)
    return {key: found[key][1] for key in sorted(found)}


def packaging(fmt: str, platform: str) -> Packaging | None:
    """How format ``fmt`` is packaged for ``platform``; ``None`` when no exporter packages it there."""
    return _packaging().get((fmt, platform))


def platform_formats(platform: str) -> tuple[str, ...]:
    """The artifact formats packaged for ``platform``, by name (the order targets are offered in)."""
    return tuple(fmt for fmt, where in _packaging() if where == platform)


def isolated_envs() -> dict[str, IsolatedEnv]:
    """``{name: IsolatedEnv}`` of the runtimes whose toolchain runs in its own venv."""
    return {c.capabilities.isolated_env.name: c.capabilities.isolated_env for c in exporter_classes().values()
            if c.capabilities.isolated_env is not None}


def device_runner_formats(scheme: str) -> tuple[str, ...]:
    """Artifact formats of the runtimes that declare the device runner ``scheme`` (:attr:`Capabilities.device_runners`)."""
    return tuple(fmt for c in exporter_classes().values() if scheme in c.capabilities.device_runners
                 for fmt in c.artifact_formats)


def snippets() -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{path under snippets/: (template, artifact formats it serves)}`` over every packaged format."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for (fmt, _platform), entry in _packaging().items():
        if entry.snippet is None:
            continue
        path, template = entry.snippet
        if path in out and out[path][0] != template:
            raise UnsupportedError(f"snippet '{path}' has two templates: {out[path][0]} and {template}")
        out[path] = (template, (*out.get(path, (template, ()))[1], fmt))
    return out


def format_suffix(fmt: str) -> str | None:
    """How an artifact of format ``fmt`` names its main file or directory (``.onnx``, ``.xml``, ...), from the
    exporters' :attr:`~Exporter.artifact_formats`; ``None`` for a format no exporter writes."""
    suffixes = {cls.artifact_formats[fmt] for cls in exporter_classes().values() if fmt in cls.artifact_formats}
    if len(suffixes) > 1:
        raise UnsupportedError(f"exporters disagree on how format '{fmt}' is named: {sorted(suffixes)}")
    return next(iter(suffixes), None)


def device_build_scripts() -> frozenset[str]:
    """Names of the scripts artifacts carry to build their device-only output on the device."""
    return frozenset(c.capabilities.device_build_script for c in exporter_classes().values()
                     if c.capabilities.device_build_script)


def template_dirs() -> list[Path]:
    """The exporters' app-template folders, by runtime name."""
    return [c.capabilities.templates for c in exporter_classes().values() if c.capabilities.templates is not None]
