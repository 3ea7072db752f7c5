"""The Jinja2 environment for generated code, and the minimal per-language snippets every bundle carries."""

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

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
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


def render(template: str, **values: Any) -> str:
    """Render ``templates/<template>`` with ``values``."""
    return environment().get_template(template).render(**values)


SNIPPETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # snippet path under snippets/: (template, platform the target must serve, artifact formats)
    "kotlin/Run.kt": ("snippets/run.kt.j2", "android", ("tflite",)),
    "swift/Run.swift": ("snippets/run.swift.j2", "ios", ("mlpackage",)),
    "python/run.py": ("snippets/run.py.j2", "python", ("onnx", "onnx-qdq", "openvino-ir", "tflite")),
}


def render_snippets(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Minimal load-and-run code for each language the bundle has an artifact for.

    Returns ``{path relative to snippets/: text}``; a language without a matching target (e.g. Swift when
    no target produced an ``mlpackage``) is left out. Pure function of ``manifest`` (the ``files`` table
    is not needed), so the bundle writer can call it before hashing.
    """
    from edgepack.package import context

    out: dict[str, str] = {}
    names = context.model_names(manifest)
    for path, (template, _platform, formats) in SNIPPETS.items():
        targets = context.ok_targets(manifest, formats)
        if not targets:
            continue
        entries = []
        for target_id in targets:
            entry = manifest["targets"][target_id]
            inputs, outputs = context.tensors(entry["artifact"])
            entries.append({"id": target_id, "entry": entry, "artifact": entry["artifact"],
                            "inputs": inputs, "outputs": outputs})
        out[path] = render(template, names=names, targets=entries, source=manifest.get("source") or {})
    return out
