"""The Jinja2 environment for generated code, and the minimal per-language snippets every bundle carries.

Templates are looked up in ``edgepack/package/templates`` (runtime-neutral ones) and then in each exporter's
template folder (:attr:`~edgepack.exporters.base.Capabilities.templates`); which snippet serves which artifact
format is each exporter's :class:`~edgepack.exporters.base.Packaging` declaration."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def environment() -> Any:
    """Strict (undefined names fail), whitespace-trimmed, newline-preserving: same manifest, same bytes."""
    import jinja2

    from edgepack.package import context

    from edgepack.exporters.registry import template_dirs

    folders = [TEMPLATES, *template_dirs()]
    clashes = template_clashes(folders)
    if clashes:  # the loader would silently serve the first folder's file
        raise RuntimeError("templates shipped by more than one folder: " + "; ".join(
            f"{name} ({', '.join(str(f) for f in where)})" for name, where in sorted(clashes.items())))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(folder) for folder in folders]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["lit"] = context.literal
    env.filters["pascal"] = context.pascal
    env.filters["camel"] = context.camel
    env.filters["upper_ident"] = context.upper
    env.filters["pyrepr"] = repr
    return env


def template_clashes(folders: list[Path]) -> dict[str, list[Path]]:
    """``{relative template path: folders}`` for every path more than one of ``folders`` ships."""
    where: dict[str, list[Path]] = {}
    for folder in folders:
        for path in folder.rglob("*.j2"):
            where.setdefault(path.relative_to(folder).as_posix(), []).append(folder)
    return {name: found for name, found in where.items() if len(found) > 1}


def render(template: str, **values: Any) -> str:
    """Render ``<template>`` (from the template search path, see the module docstring) with ``values``."""
    return environment().get_template(template).render(**values)


def render_snippets(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Minimal load-and-run code for each language the bundle has an artifact for.

    Returns ``{path relative to snippets/: text}``; a language without a matching target (e.g. Swift when
    no target produced an ``mlpackage``) is left out. Pure function of ``manifest`` (the ``files`` table
    is not needed), so the bundle writer can call it before hashing.
    """
    from edgepack.exporters.registry import packaging, snippets
    from edgepack.package import context

    out: dict[str, str] = {}
    names = context.model_names(manifest)
    for path, (template, formats) in snippets().items():
        targets = context.ok_targets(manifest, formats)
        if not targets:
            continue
        entries = []
        for target_id in targets:
            entry = manifest["targets"][target_id]
            inputs, outputs = context.tensors(entry["artifact"])
            python = packaging(entry["artifact"]["format"], "python")
            entries.append({"id": target_id, "entry": entry, "artifact": entry["artifact"],
                            "inputs": inputs, "outputs": outputs,
                            "python_runtime": python.python_runtime if python is not None else None})
        out[path] = render(template, names=names, targets=entries, source=manifest.get("source") or {})
    return out
