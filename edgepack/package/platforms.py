"""One builder per app platform: which artifact it needs, and the files of its deliverable.

A builder returns a :class:`Deliverable` (generated text + bundle files to copy); writing it to disk is
:mod:`edgepack.package.build`'s job. Adding a platform is one builder and one :data:`PLATFORMS` entry.
Which artifact formats a platform packages, the runtime each is pinned to and its templates are the exporters'
declarations (:class:`~edgepack.exporters.base.Packaging`, asked through :mod:`edgepack.exporters.registry`).
"""

from __future__ import annotations

import pprint
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from edgepack.errors import BundleError, InputError, UnsupportedError
from edgepack.exporters.base import Packaging
from edgepack.exporters.registry import device_build_scripts, format_suffix, packaging, platform_formats
from edgepack.package import context
from edgepack.package.accelerators import AcceleratorFacts, coreml_compute_units, kotlin_delegate, recommended_accelerator
from edgepack.package.render import render


@dataclass
class Deliverable:
    """Files of one platform package: ``text`` is generated, ``copies`` come from the bundle."""

    targets: list[str]
    text: dict[str, str] = field(default_factory=dict)
    copies: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk as the builders see it."""

    root: Path
    manifest: dict[str, Any]
    sha256: str
    """sha256 of manifest.json: it lists every file's hash, so it identifies the whole bundle."""

    def entry(self, target_id: str) -> dict[str, Any]:
        return self.manifest["targets"][target_id]

    def artifact_copies(self, target_id: str, dest: str) -> dict[str, Path]:
        """``{dest/<path inside the artifact dir>: file}`` for every file of the target's artifact."""
        artifact = self.entry(target_id)["artifact"]
        base = PurePosixPath(artifact["path"]).parent
        out: dict[str, Path] = {}
        for name in artifact["files"]:
            relative = PurePosixPath(name).relative_to(base)
            source = (self.root / name).resolve()
            if not source.is_relative_to(self.root.resolve()) or not source.is_file():
                raise BundleError(f"{self.root}: artifact file '{name}' of target '{target_id}' is missing")
            out[f"{dest}/{relative.as_posix()}"] = source
        return out


Builder = Callable[[Bundle, "str | None"], Deliverable]


@dataclass(frozen=True)
class Platform:
    name: str
    hint: str
    build: Builder

    @property
    def formats(self) -> tuple[str, ...]:
        """Artifact formats it can package, in the order targets are offered (the exporters' declarations)."""
        return platform_formats(self.name)


def _packaging(artifact: Mapping[str, Any], platform: str) -> Packaging:
    facts = packaging(artifact["format"], platform)
    if facts is None:  # choose_targets only offers declared formats
        raise BundleError(f"no exporter packages format '{artifact['format']}' for platform '{platform}'")
    return facts


def choose_targets(bundle: Bundle, platform: Platform, target: str | None) -> list[str]:
    """The bundle's targets this platform can package (only ``target`` when given)."""
    usable = context.ok_targets(bundle.manifest, platform.formats)
    if target is not None:
        if target not in usable:
            entry = (bundle.manifest.get("targets") or {}).get(target)
            why = ("is not in the bundle" if entry is None else
                   f"has status {entry.get('status')!r}" if entry.get("status") != "ok" else
                   f"has a {(entry.get('artifact') or {}).get('format')} artifact")
            raise InputError(f"--target {target}: {why}; --platform {platform.name} needs a "
                             f"{' / '.join(platform.formats)} artifact", hint=f"usable here: {', '.join(usable) or 'none'}")
        return [target]
    if not usable:
        present = ", ".join(f"{t} ({(e.get('artifact') or {}).get('format', 'no artifact')})"
                            for t, e in sorted((bundle.manifest.get("targets") or {}).items())) or "none"
        raise UnsupportedError(f"{bundle.root}: no target with a {' / '.join(platform.formats)} artifact for "
                               f"--platform {platform.name} (targets: {present})", hint=platform.hint)
    return usable


def _labels(bundle: Bundle) -> str | None:
    labels = bundle.manifest.get("labels")
    return "".join(f"{label}\n" for label in labels) if labels else None


def _common(bundle: Bundle, target_id: str) -> dict[str, Any]:
    entry = bundle.entry(target_id)
    inputs, outputs = context.tensors(entry["artifact"])
    return {
        "names": context.model_names(bundle.manifest),
        "bundle_hash": bundle.sha256,
        "target_id": target_id,
        "entry": entry,
        "artifact": entry["artifact"],
        "inputs": inputs,
        "outputs": outputs,
        "has_labels": bool(bundle.manifest.get("labels")),
        "source": bundle.manifest.get("source") or {},
    }


# --------------------------------------------------------------------------------------------------
# android
# --------------------------------------------------------------------------------------------------

def _accelerator_facts(entry: Mapping[str, Any]) -> AcceleratorFacts:
    """The accelerator facts the manifest records for the target; a bundle written before they were recorded
    gets its shipped profile's (none when the profile is not shipped: the CPU path)."""
    profile = entry.get("profile") or {}
    if "accelerators" in profile:
        return profile["accelerators"] or {}
    from edgepack.targets.registry import load_registry

    registry = load_registry()
    return registry.get(profile["id"]) if profile.get("id") in registry.ids() else {}


def _delegate_choice(entry: Mapping[str, Any], target_id: str) -> tuple[Any, str]:
    """(delegate or None, why the CPU when None) from the target's placement report."""
    placement = entry.get("placement")
    name = recommended_accelerator(placement)
    if name is None:
        why = (f"No accelerator of {entry['profile']['name']} runs every op of this model "
               f"(reports/{target_id}/placement.json)." if placement else "The bundle has no placement report.")
        return None, why
    delegate = kotlin_delegate(_accelerator_facts(entry), name)
    if delegate is None:
        return None, f"The placement check recommends '{name}', whose delegate is not on Google Maven."
    return delegate, ""


def build_android(bundle: Bundle, target: str | None) -> Deliverable:
    """An Android module: the runtime's Kotlin runner and README (the templates the exporter's
    :attr:`~edgepack.exporters.base.Packaging.app_templates` names), its Gradle dependency pinned to the version
    the bundle records, and the artifact and labels as assets."""
    target_id = choose_targets(bundle, PLATFORMS["android"], target)[0]
    values = _common(bundle, target_id)
    entry = values["entry"]
    facts = _packaging(values["artifact"], "android")
    version = (entry.get("toolchain") or {}).get(facts.distribution)
    if not version:
        raise BundleError(f"{bundle.root}: target '{target_id}' records no {facts.distribution} version to pin "
                          f"{facts.app_library} to")
    for spec in values["inputs"]:
        if spec.dtype == "float16" and spec.has_preprocess:
            raise UnsupportedError(f"target '{target_id}': input '{spec.name}' is float16 with preprocessing; the "
                                   "Kotlin generator handles float32 or quantized inputs", hint="use a float32-I/O recipe")
    delegate, cpu_reason = _delegate_choice(entry, target_id)
    gradle = [f"{facts.app_library}:{version}"] + [f"{g}:{version}" for g in (delegate.gradle if delegate else ())]
    names = values["names"]
    asset_dir = names["bundle_name"]
    values.update(
        delegate=delegate,
        cpu_reason=cpu_reason,
        asset_dir=asset_dir,
        model_asset=f"{asset_dir}/{PurePosixPath(entry['artifact']['path']).name}",
        signature=(entry["artifact"].get("settings") or {}).get("signature"),
        gradle=gradle,
        runtime_source=f"{facts.distribution} {version}",
        runtime_version=version,
        accelerator_line=(f"{delegate.name} delegate, CPU (XNNPACK) fallback" if delegate else f"CPU (XNNPACK). {cpu_reason}"),
    )
    templates = facts.app_templates or "android"
    kotlin_dir = "src/main/kotlin/" + names["kotlin_package"].replace(".", "/")
    out = Deliverable([target_id])
    out.text[f"{kotlin_dir}/{names['runner_class']}.kt"] = render(f"{templates}/Runner.kt.j2", **values)
    out.text["dependencies.gradle.kts"] = render(f"{templates}/dependencies.gradle.kts.j2", **values)
    out.text["README.md"] = render(f"{templates}/README.md.j2", **values)
    labels = _labels(bundle)
    if labels:
        out.text[f"src/main/assets/{asset_dir}/labels.txt"] = labels
    out.copies.update(bundle.artifact_copies(target_id, f"src/main/assets/{asset_dir}"))
    return out


# --------------------------------------------------------------------------------------------------
# ios
# --------------------------------------------------------------------------------------------------


def _compute_units(entry: Mapping[str, Any], target_id: str) -> tuple[str, str]:
    name = recommended_accelerator(entry.get("placement"))
    units = coreml_compute_units(_accelerator_facts(entry), name) if name is not None else None
    if units is not None:
        return units, f"the placement check found '{name}' able to run every op"
    if entry.get("placement"):
        return ".all", f"no single accelerator runs every op (reports/{target_id}/placement.json); Core ML splits the graph"
    return ".all", "the bundle has no placement report; Core ML picks"


def _model_dir(artifact: Mapping[str, Any], target_id: str) -> PurePosixPath:
    """The model folder of a directory-format artifact, named with its format's suffix (its ``path`` may name a
    descriptor file beside it)."""
    suffix = format_suffix(artifact["format"])
    for name in [artifact["path"], *artifact.get("files", ())]:
        for part in PurePosixPath(name).parents:
            if part.suffix == suffix:
                return part
        if PurePosixPath(name).suffix == suffix:
            return PurePosixPath(name)
    raise BundleError(f"target '{target_id}': its {artifact['format']} artifact lists no {suffix} folder")


def build_ios(bundle: Bundle, target: str | None) -> Deliverable:
    target_id = choose_targets(bundle, PLATFORMS["ios"], target)[0]
    values = _common(bundle, target_id)
    model_dir = _model_dir(values["artifact"], target_id)
    model_file = model_dir.name
    units, reason = _compute_units(values["entry"], target_id)
    values.update(model_file=model_file, model_stem=model_dir.stem, model_ext=model_dir.suffix.lstrip("."),
                  compute_units=units, compute_units_reason=reason)
    names = values["names"]
    sources = f"Sources/{names['class_prefix']}"
    out = Deliverable([target_id])
    out.text["Package.swift"] = render("ios/Package.swift.j2", **values)
    out.text[f"{sources}/{names['runner_class']}.swift"] = render("ios/Runner.swift.j2", **values)
    out.text["README.md"] = render("ios/README.md.j2", **values)
    labels = _labels(bundle)
    if labels:
        out.text[f"{sources}/Resources/labels.txt"] = labels
    copies = bundle.artifact_copies(target_id, f"{sources}/Resources")
    inside = f"{sources}/Resources/{model_file}/"
    out.copies.update({dest: src for dest, src in copies.items() if dest.startswith(inside)})
    return out


# --------------------------------------------------------------------------------------------------
# python
# --------------------------------------------------------------------------------------------------

def _io_map(artifact: Mapping[str, Any], source_specs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """``{source name: {name, perm, shape, dtype, quant}}`` for the artifact's inputs (``key="input"``) or outputs;
    ``shape`` (or ``None``) is the reshape the converter's squeezed/moved size-1 dims need before ``perm``."""
    specs = {s["name"]: s for s in artifact[f"{key}s"]}
    mapping = (artifact.get("settings") or {}).get(f"{key}_map")
    out: dict[str, Any] = {}
    for position, source in enumerate(source_specs):
        name, perm, shape = source["name"], list(range(len(source["shape"]))), None
        if mapping:
            entry = mapping[source["name"]]
            name, perm = str(entry["name"]), [int(p) for p in entry["perm"]]
            shape = [int(d) for d in entry["shape"]] if entry.get("shape") is not None else None
            position = int(entry.get("position", position))
        spec = specs.get(name)
        if spec is None:
            raise BundleError(f"artifact {artifact['path']}: no {key} named '{name}'")
        out[source["name"]] = {"name": name, "perm": perm, "shape": shape, "dtype": spec.get("dtype", "float32"),
                               "quant": spec.get("quant"), "position": position}
    return out


def _static_batch(artifact: Mapping[str, Any]) -> int | None:
    first = (artifact.get("inputs") or [{}])[0].get("shape") or []
    return first[0] if first and isinstance(first[0], int) else None


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


def _literal(value: Any, *, keep_order: bool = False) -> str:
    """A deterministic Python literal; ``keep_order`` keeps the top level's insertion order."""
    if keep_order and isinstance(value, dict):
        value = {k: _sorted(v) for k, v in value.items()}
    else:
        value = _sorted(value)
    return pprint.pformat(value, width=100, sort_dicts=False)


VERSION_ENV = "EDGEPACK_ALLOW_RUNTIME_MISMATCH"
"""Environment variable (=1) that lets a generated Python runner load on a runtime of another major.minor."""


def build_python(bundle: Bundle, target: str | None) -> Deliverable:
    target_ids = choose_targets(bundle, PLATFORMS["python"], target)
    build_scripts = device_build_scripts()
    source = bundle.manifest.get("source") or {}
    names = context.model_names(bundle.manifest)
    inputs = {}
    for spec in source.get("inputs", ()):
        view = context.tensor(spec)
        inputs[spec["name"]] = {"shape": list(spec["shape"]), "dtype": spec.get("dtype", "float32"),
                                "layout": spec.get("layout"), "preprocess": spec.get("preprocess"),
                                "channel_axis": view.channel_axis}
    outputs = {s["name"]: {"shape": list(s["shape"]), "dtype": s.get("dtype", "float32")} for s in source.get("outputs", ())}
    targets: dict[str, Any] = {}
    rows, requirements, modules = [], set(), {}
    out = Deliverable(target_ids)
    for target_id in target_ids:
        entry = bundle.entry(target_id)
        artifact = entry["artifact"]
        facts = _packaging(artifact, "python")
        runtime, distribution = facts.python_runtime, facts.distribution
        modules[runtime] = facts.python_module
        version = (entry.get("toolchain") or {}).get(distribution)
        requirement = f"{distribution}=={version}" if version else distribution
        requirements.add(requirement)
        copies = bundle.artifact_copies(target_id, f"models/{target_id}")
        out.copies.update(copies)
        model = f"models/{target_id}/{PurePosixPath(artifact['path']).name}"
        targets[target_id] = {
            "runtime": runtime,
            "runtime_package": distribution,
            "runtime_version": version,
            "runtime_pin": (entry.get("toolchain_pins") or {}).get(distribution),
            "model": model,
            "sha256": artifact["sha256"],
            "precision": artifact["precision"],
            "signature": (artifact.get("settings") or {}).get("signature"),
            "static_batch": _static_batch(artifact),
            "simulate_quantization": facts.simulate_quantization,
            "input_map": _io_map(artifact, source.get("inputs", []), "input"),
            "output_map": _io_map(artifact, source.get("outputs", []), "output"),
        }
        rows.append({"id": target_id, "runtime": runtime, "files": sorted(copies), "precision": artifact["precision"],
                     "requirement": requirement, "format": artifact["format"],
                     "device_runtime": (entry.get("profile") or {}).get("runtime"),
                     "engine_script": next((f for f in sorted(copies) if PurePosixPath(f).name in build_scripts), None)})
    views = [context.tensor(s) for s in source.get("inputs", ())]
    values = {
        "names": names, "bundle_hash": bundle.sha256, "source": source, "inputs": views,
        "runtimes": sorted({c["runtime"] for c in targets.values()}), "targets": rows,
        "inputs_literal": _literal(inputs), "outputs_literal": _literal(outputs), "targets_literal": _literal(targets, keep_order=True),
        "labels_literal": _literal(bundle.manifest.get("labels")), "requirements": sorted(requirements),
        "version_env": VERSION_ENV, "runtime_modules_literal": _literal(dict(sorted(modules.items()))),
    }
    out.text[f"{names['module']}.py"] = render("python/runner.py.j2", **values)
    out.text["requirements.txt"] = render("python/requirements.txt.j2", **values)
    out.text["README.md"] = render("python/README.md.j2", **values)
    return out


PLATFORMS: dict[str, Platform] = {
    "android": Platform("android", "export to an Android target, e.g. --target android-pixel8", build_android),
    "ios": Platform("ios", "export to a Core ML target, e.g. --target iphone-15-pro", build_ios),
    "python": Platform("python", "export to a host target, e.g. --target host-ort", build_python),
}
