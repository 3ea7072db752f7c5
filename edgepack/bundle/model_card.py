"""``MODEL_CARD.md``: a bundle's manifest as a page for app teams and release reviewers."""

from __future__ import annotations

from typing import Any, Mapping

MISSING = "—"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _size(n: int | None) -> str:
    if n is None:
        return MISSING
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _preprocess(pre: Mapping[str, Any] | None) -> str:
    if not pre:
        return ""
    text = f"(x * {pre.get('scale', 1.0):g} - mean {list(pre.get('mean', []))}) / std {list(pre.get('std', []))}"
    return f"{text} ({pre['description']})" if pre.get("description") else text


def _tensor(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": spec.get("name"), "dtype": spec.get("dtype", "float32"),
            "shape": "[" + ", ".join(str(d) for d in spec.get("shape", [])) + "]",
            "layout": spec.get("layout"), "preprocess": _preprocess(spec.get("preprocess"))}


def _parity(parity: Mapping[str, Any] | None) -> str:
    if not parity:
        return MISSING
    parts = [f"min cosine {_fmt(parity.get('min_cosine'))}", f"max rel err {_fmt(parity.get('max_rel_error'))}"]
    if parity.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {_fmt(parity['top1_agreement'])}")
    return ", ".join(parts) + f" ({'pass' if parity.get('passed') else 'fail'}, {parity.get('samples')} samples)"


def _gate(gate: Mapping[str, Any] | None) -> str:
    """Verdict, the drop's 95 % interval and sample count, and the note when the data cannot resolve the threshold."""
    if not gate:
        return MISSING
    text = "pass" if gate.get("passed") else f"fail: {gate.get('reason')}"
    facts = []
    interval = gate.get("drop_ci95")
    if interval:
        facts.append(f"drop 95% CI [{_fmt(float(interval[0]))}, {_fmt(float(interval[1]))}]")
    if gate.get("samples"):
        facts.append(f"{gate['samples']} samples")
    if facts:
        text += f" ({', '.join(facts)})"
    if gate.get("note"):
        text += f"; {gate['note']}"
    return text


def _placement(placement: Mapping[str, Any] | None) -> str:
    if not placement:
        return "every op on the CPU (no accelerator op table)"
    total = placement.get("total_ops")
    return "; ".join(f"{a.get('accelerator')}: {a.get('supported')}/{total} ops" for a in placement.get("accelerators", ()))


def _speed_vs_fp32(attempts: list[Mapping[str, Any]], recipe: str | None) -> str:
    """The gate's interleaved speed check: a ratio against the same runtime's fp32 artifact. Its milliseconds
    are wall time per Python predictor call with the fp32 model alternating on the same cores, so they are
    larger than ``edgepack bench``'s p50 (warm, one model, the runtime's own clock where it has one)."""
    chosen = next((a for a in attempts if a.get("recipe") == recipe and a.get("status") == "passed"), None)
    latency = (chosen or {}).get("latency_vs_fp32")
    if not latency:
        return f"not measured ({(chosen or {}).get('reason', 'no passing attempt')})"
    return (f"{latency['speedup']}x fp32 ({latency['candidate_ms']} vs {latency['baseline_ms']} ms wall per call, "
            f"interleaved, {latency.get('rounds')} rounds)")


def _bench_p50(bench: Mapping[str, Any] | None) -> str:
    """``edgepack bench``'s absolute latency when the export ran it (``--bench``), else how to get it."""
    if not bench:
        return "not benchmarked (`edgepack bench`)"
    if not bench.get("measured"):
        return f"not measured ({bench.get('reason')})"
    clock = bench.get("clock", "wall")
    return f"p50 {_fmt(bench.get('p50'))} ms, p95 {_fmt(bench.get('p95'))} ms ({bench.get('runner')}, {clock} clock)"


def _row(target_id: str, entry: Mapping[str, Any]) -> dict[str, str]:
    artifact = entry.get("artifact") or {}
    gate = entry.get("gate") or {}
    profile = entry.get("profile") or {}
    return {
        "id": target_id,
        "device": profile.get("name", MISSING),
        "runtime": profile.get("runtime", MISSING),
        "status": entry.get("status", MISSING) + (f": {entry['error']}" if entry.get("error") else ""),
        "precision": artifact.get("precision", MISSING),
        "recipe": entry.get("recipe") or MISSING,
        "chain": " → ".join(entry.get("recipe_chain") or []),
        "size": _size(artifact.get("bytes")),
        "metric": f"{gate.get('metric', MISSING)} ({gate.get('kind', MISSING)})" if gate else MISSING,
        "baseline": _fmt(gate.get("baseline")),
        "value": _fmt(gate.get("value")),
        "drop": _fmt(gate.get("drop")),
        "parity": _parity(entry.get("parity")),
        "gate": _gate(gate),
        "placement": _placement(entry.get("placement")),
        "speed": _speed_vs_fp32(entry.get("attempts") or [], entry.get("recipe")),
        "bench": _bench_p50(entry.get("bench")),
        "toolchain": ", ".join(f"{k} {v}" for k, v in sorted((entry.get("toolchain") or {}).items())) or MISSING,
        "pins": ", ".join(f"{k}{v}" for k, v in sorted((entry.get("toolchain_pins") or {}).items())) or MISSING,
    }


def _not_measured(targets: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = []
    for target_id, entry in sorted(targets.items()):
        name = (entry.get("profile") or {}).get("name", target_id)
        runnable = entry.get("runnable_here")
        if entry.get("status") != "ok":
            lines.append(f"`{target_id}`: no artifact ({entry.get('error') or entry.get('status')}).")
            continue
        if runnable != "yes":
            lines.append(f"`{target_id}`: the artifact did not run on its own runtime here ({runnable}).")
        if not entry.get("bench"):
            lines.append(f"`{target_id}`: absolute latency, memory and energy on {name} (not benchmarked; "
                         "`edgepack bench` with a runner for the device measures them).")
        if entry.get("placement"):
            lines.append(f"`{target_id}`: which ops the {name} driver really runs on each accelerator "
                         "(the placement table is an op-table check).")
    return lines


def render_model_card(manifest: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md`` text for ``manifest`` (pure function; the ``files`` table is not needed)."""
    from edgepack.package.render import render

    data = manifest.get("data") or {}
    source = manifest.get("source") or {}
    targets = manifest.get("targets") or {}
    labels = manifest.get("labels")
    gate_line = (f"Gate: evaluation on `{data.get('evaluation')}`, at most {data.get('max_drop')} absolute drop vs fp32, "
                 f"at most {data.get('max_slowdown')} slower than fp32 where latency is measurable here; "
                 f"calibration data `{data.get('calibration')}`.")
    return render(
        "bundle/MODEL_CARD.md.j2",
        name=manifest.get("name", MISSING),
        created_by=manifest.get("created_by", "edgepack"),
        schema_version=manifest.get("schema_version"),
        source=source,
        inputs=[_tensor(s) for s in source.get("inputs", [])],
        outputs=[_tensor(s) for s in source.get("outputs", [])],
        labels=(f"{len(labels)}: " + ", ".join(labels[:10]) + (", …" if len(labels) > 10 else "")) if labels else "none",
        rows=[_row(t, e) for t, e in sorted(targets.items())],
        gate_line=gate_line,
        not_measured=_not_measured(targets) or ["nothing recorded as unmeasured"],
    )
