"""``edgepack diff``: what changed between two bundles, per target, for release reviews and CI.

A change to what an app calls — I/O names, order, shapes, dtypes, layout, quantization parameters,
or a target that disappeared — is *breaking*, and so is a change to a target's deployment contract: its
label set, its input preprocessing (scale, mean, std, layout, colour order, size, baked into the model or
not) or its postprocessing (``postprocess``, e.g. NMS settings). Everything else (size, accuracy, parity,
latency, placement, recipe, toolchain versions) is informational.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping


IO_FIELDS = ("shape", "dtype", "layout", "quant", "preprocess")
PREPROCESS_FIELDS = ("scale", "mean", "std", "layout", "baked", "colour_order", "size")
"""Preprocessing facts compared per target input (``layout`` is the artifact input's)."""
BAKED_PREFIX = "baked into the model: "
"""Description prefix of a preprocessing baked into the graph (``edgepack.models.bake.BAKED_PREFIX``)."""


@dataclass(frozen=True)
class Change:
    """One difference. ``target`` is ``None`` for bundle-level facts (source, labels)."""

    target: str | None
    aspect: str
    """size, accuracy, parity, latency, placement, recipe, precision, status, artifact, toolchain, io,
    labels, contract, source, target."""
    item: str
    old: Any
    new: Any
    breaking: bool = False

    def describe(self) -> str:
        text = f"{self.item}: {_show(self.old)} → {_show(self.new)}"
        ratio = _relative(self.old, self.new)
        return f"{text} ({ratio})" if ratio else text


@dataclass
class BundleDiff:
    old: str
    new: str
    changes: list[Change] = field(default_factory=list)

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking]

    def to_dict(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "breaking": bool(self.breaking),
                "changes": [asdict(c) for c in self.changes]}


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _relative(old: Any, new: Any) -> str:
    numbers = (int, float)
    if isinstance(old, numbers) and isinstance(new, numbers) and not isinstance(old, bool) and old:
        return f"{(new - old) / abs(old) * 100:+.1f} %"
    return ""


def load(path: str | Path, public_key: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """A bundle (directory or ``.zip``, verified; its signature too with ``public_key``) or a bare
    ``manifest.json`` (read as it is, unless ``public_key`` asks for its bundle to be verified) -> (label, manifest)."""
    from edgepack.bundle.verify import open_bundle
    from edgepack.bundle.writer import MANIFEST_NAME, read_manifest

    path = Path(path)
    if path.is_file() and path.name == MANIFEST_NAME:
        if public_key is None:
            return str(path.parent), read_manifest(path.parent)
        path = path.parent
    with open_bundle(path, public_key) as opened:
        return str(path), opened.manifest


def diff_bundles(old: str | Path, new: str | Path, *, public_key: str | Path | None = None) -> BundleDiff:
    """Compare two bundles (directories, ``.zip`` archives or manifest.json files)."""
    old_label, old_manifest = load(old, public_key)
    new_label, new_manifest = load(new, public_key)
    return diff_manifests(old_manifest, new_manifest, old_label=old_label, new_label=new_label)


def diff_manifests(old: Mapping[str, Any], new: Mapping[str, Any], *, old_label: str = "old",
                   new_label: str = "new") -> BundleDiff:
    """Every difference between two manifests, bundle-level first, then per target (sorted)."""
    result = BundleDiff(old_label, new_label)
    add = result.changes.append
    old_source, new_source = old.get("source") or {}, new.get("source") or {}
    for key in ("uri", "sha256"):
        if old_source.get(key) != new_source.get(key):
            add(Change(None, "source", key, old_source.get(key), new_source.get(key)))
    result.changes.extend(_io(None, "source", old_source, new_source))
    if old.get("labels") != new.get("labels"):
        add(Change(None, "labels", "labels", old.get("labels"), new.get("labels"), breaking=True))
    old_targets, new_targets = old.get("targets") or {}, new.get("targets") or {}
    for target in sorted(set(old_targets) | set(new_targets)):
        if target not in new_targets:
            add(Change(target, "target", "target", "present", "removed", breaking=True))
        elif target not in old_targets:
            add(Change(target, "target", "target", "absent", "added"))
        else:
            result.changes.extend(_target(target, old_targets[target], new_targets[target]))
            result.changes.extend(_contract(target, contract_view(old, target), contract_view(new, target)))
    return result


def contract_view(manifest: Mapping[str, Any], target: str) -> dict[str, Any]:
    """The deployment contract of ``target`` as the manifest records it: ``labels``, ``preprocess`` per
    artifact input (:data:`PREPROCESS_FIELDS`) and ``postprocess``. A ``contract`` dict in the target entry
    (or its artifact) wins where it carries a field; the artifact's inputs, then the source's (by position),
    give the preprocessing; the bundle's labels are every target's labels otherwise."""
    entry = (manifest.get("targets") or {}).get(target) or {}
    artifact = entry.get("artifact") or {}
    contract = entry.get("contract") or artifact.get("contract") or {}
    source = manifest.get("source") or {}
    labels = contract["labels"] if "labels" in contract else manifest.get("labels")
    contract_inputs = {s.get("name"): s for s in contract.get("inputs") or []}
    source_inputs = source.get("inputs") or []
    preprocess: dict[str, Any] = {}
    for position, spec in enumerate(artifact.get("inputs") or source_inputs):
        name = spec.get("name")
        from_contract = contract_inputs.get(name) or {}
        pre = from_contract.get("preprocess", spec.get("preprocess"))
        if pre is None and "preprocess" not in from_contract and position < len(source_inputs):
            pre = source_inputs[position].get("preprocess")
        if pre is None:
            preprocess[name] = None
            continue
        view = {key: pre.get(key) for key in PREPROCESS_FIELDS}
        view["layout"] = from_contract.get("layout", spec.get("layout"))
        view["baked"] = bool(pre.get("baked")) or str(pre.get("description") or "").startswith(BAKED_PREFIX)
        preprocess[name] = view
    postprocess = contract.get("postprocess", entry.get("postprocess", artifact.get("postprocess")))
    return {"labels": labels, "preprocess": preprocess, "postprocess": postprocess}


def _contract(target: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Breaking changes of a target's deployment contract (labels, preprocessing, postprocessing)."""
    changes: list[Change] = []
    if old["labels"] != new["labels"]:
        changes.append(Change(target, "contract", "labels", old["labels"], new["labels"], breaking=True))
    old_pre, new_pre = old["preprocess"], new["preprocess"]
    for name in [n for n in old_pre if n in new_pre]:
        a, b = old_pre[name], new_pre[name]
        if a is None or b is None:
            if a != b:
                changes.append(Change(target, "contract", f"preprocess '{name}'", a, b, breaking=True))
            continue
        for key in PREPROCESS_FIELDS:
            if a.get(key) != b.get(key):
                changes.append(Change(target, "contract", f"preprocess '{name}' {key}", a.get(key), b.get(key),
                                      breaking=True))
    if old["postprocess"] != new["postprocess"]:
        changes.append(Change(target, "contract", "postprocess", old["postprocess"], new["postprocess"],
                              breaking=True))
    return changes


def _get(data: Mapping[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _compare(target: str, aspect: str, pairs: list[tuple[str, Any, Any]]) -> list[Change]:
    return [Change(target, aspect, item, a, b) for item, a, b in pairs if a != b]


def _metric_name(gate: Mapping[str, Any]) -> str | None:
    metric = gate.get("metric")
    return f"{metric} ({gate['kind']})" if metric and gate.get("kind") else metric


def _accuracy(target: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Gate values compared only when both bundles measured the same metric: a labelled top-1 and a top-1
    agreement with fp32 (fidelity) are different quantities, so a change of metric is reported as such, with
    each value next to its own metric, and no delta is computed across them."""
    old_metric, new_metric = _metric_name(old), _metric_name(new)
    passed = [("gate passed", old.get("passed"), new.get("passed"))]
    if old and new and old_metric != new_metric:
        return [Change(target, "accuracy", "metric (values not comparable)",
                       f"{old_metric} {_short(old.get('value'))}", f"{new_metric} {_short(new.get('value'))}")
                ] + _compare(target, "accuracy", passed)
    return _compare(target, "accuracy", [(new_metric or old_metric or "metric", old.get("value"), new.get("value")),
                                         ("drop vs fp32", old.get("drop"), new.get("drop")), *passed])


def _short(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _latency(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for attempt in entry.get("attempts") or []:
        if attempt.get("recipe") == entry.get("recipe") and attempt.get("status") == "passed":
            return attempt.get("latency_vs_fp32")
    return None


def _placement(entry: Mapping[str, Any]) -> dict[str, Any]:
    placement = entry.get("placement") or {}
    total = placement.get("total_ops")
    out: dict[str, Any] = {"total ops": total}
    for acc in placement.get("accelerators", ()):
        out[f"{acc.get('accelerator')} ops"] = f"{acc.get('supported')}/{total}"
    return out


def _target(target: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    changes: list[Change] = []
    changes += _compare(target, "status", [("status", old.get("status"), new.get("status"))])
    changes += _compare(target, "recipe", [("recipe", old.get("recipe"), new.get("recipe")),
                                           ("recipe chain", old.get("recipe_chain"), new.get("recipe_chain"))])
    oa, na = old.get("artifact") or {}, new.get("artifact") or {}
    changes += _compare(target, "precision", [("precision", oa.get("precision"), na.get("precision"))])
    changes += _compare(target, "artifact", [("format", oa.get("format"), na.get("format")),
                                             ("converter", oa.get("converter"), na.get("converter")),
                                             ("sha256", oa.get("sha256"), na.get("sha256"))])
    changes += _compare(target, "size", [("bytes", oa.get("bytes"), na.get("bytes"))])
    changes += _accuracy(target, old.get("gate") or {}, new.get("gate") or {})
    changes += _compare(target, "parity", [(k, _get(old, "parity", k), _get(new, "parity", k))
                                           for k in ("min_cosine", "max_rel_error", "top1_agreement", "passed")])
    ol, nl = _latency(old) or {}, _latency(new) or {}
    changes += _compare(target, "latency", [("host ms", ol.get("candidate_ms"), nl.get("candidate_ms")),
                                            ("speedup vs fp32", ol.get("speedup"), nl.get("speedup"))])
    op, np_ = _placement(old), _placement(new)
    changes += _compare(target, "placement", [(k, op.get(k), np_.get(k)) for k in sorted(set(op) | set(np_))])
    ot, nt = old.get("toolchain") or {}, new.get("toolchain") or {}
    changes += _compare(target, "toolchain", [(k, ot.get(k), nt.get(k)) for k in sorted(set(ot) | set(nt))])
    if oa and na:
        changes += _io(target, "artifact", oa, na, skip=("preprocess",))  # preprocessing: see _contract
        if _get(oa, "settings", "signature") != _get(na, "settings", "signature"):
            changes.append(Change(target, "io", "signature key", _get(oa, "settings", "signature"),
                                  _get(na, "settings", "signature"), breaking=True))
    elif oa and not na:
        changes.append(Change(target, "artifact", "artifact", oa.get("path"), None, breaking=True))
    return changes


def _io(target: str | None, where: str, old: Mapping[str, Any], new: Mapping[str, Any],
        skip: tuple[str, ...] = ()) -> list[Change]:
    """Breaking changes of the inputs/outputs of ``old`` vs ``new`` (source or artifact I/O)."""
    changes: list[Change] = []
    for kind in ("inputs", "outputs"):
        old_specs = {s.get("name"): s for s in old.get(kind) or []}
        new_specs = {s.get("name"): s for s in new.get(kind) or []}
        if list(old_specs) != list(new_specs):
            changes.append(Change(target, "io", f"{where} {kind}", list(old_specs), list(new_specs), breaking=True))
        for name in [n for n in old_specs if n in new_specs]:
            for key in (k for k in IO_FIELDS if k not in skip):
                a, b = old_specs[name].get(key), new_specs[name].get(key)
                if a != b:
                    changes.append(Change(target, "io", f"{where} {kind[:-1]} '{name}' {key}", a, b, breaking=True))
    return changes
