"""The farm's HTML report: one self-contained file (plots are embedded PNGs, no network, no scripts).

Sections: the latest run's status, the devices that failed in it (red, with their last error) and the
regressions and missing results; per device its state tonight, a table of the latest results (with
bundle hash and toolchain), its latency history (p50 with the p99 dashed, per model/target/recipe)
and percentile bars; per target an accuracy x latency scatter. Rows that regressed are highlighted.

A device's state tonight comes from its jobs in the latest run, not from the stored online flag alone:
``failed`` (no result, or marked offline), ``failing`` (some jobs without a result), ``ok``, or
``not in this run``.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack._fs import write_atomic
from edgepack.errors import InputError

if TYPE_CHECKING:
    from edgepack.farm.regress import RegressionReport
    from edgepack.farm.store import ResultRow, Store

TEMPLATE = "report.html.j2"
HISTORY_RUNS = 30
"""Runs shown in the latency history plots."""


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _label(row: "ResultRow") -> str:
    return f"{row.model}/{row.target}/{row.recipe}"


def _history_plot(rows: Sequence["ResultRow"], run_order: dict[int, int], flagged: set[tuple[str, ...]]) -> str:
    """p50 (solid) and p99 (dashed) per key over runs; a regressed latest point is ringed in red."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.2))
    series: dict[str, list["ResultRow"]] = defaultdict(list)
    for row in rows:
        series[_label(row)].append(row)
    for index, (label, points) in enumerate(sorted(series.items())):
        color = f"C{index % 10}"
        xs = [run_order[p.run_id] for p in points]
        axes.plot(xs, [p.p50 for p in points], "o-", color=color, label=f"{label} p50")
        tail = [(x, p.p99) for x, p in zip(xs, points) if p.p99 is not None]  # summary-only runners have no p99
        if tail:
            axes.plot(*zip(*tail), "--", color=color, alpha=0.6, label=f"{label} p99")
        if points[-1].key in flagged:
            axes.plot(xs[-1], points[-1].p50, "o", markersize=14, markerfacecolor="none", markeredgecolor="red",
                      markeredgewidth=2, label=f"{label} regression")
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("run")
    axes.set_ylabel("latency (ms)")
    axes.set_ylim(0, max(max(r.p99 if r.p99 is not None else r.p50 for r in rows), 1e-9) * 1.35)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", ncols=2)
    return _png(figure)


def _percentile_plot(rows: Sequence["ResultRow"]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(figsize=(7, 0.6 + 0.5 * max(2, len(rows))))
    positions = np.arange(len(rows))
    for offset, (name, color) in enumerate((("p50", "C0"), ("p90", "C1"), ("p99", "C3"))):
        values = [getattr(r, name) or 0.0 for r in rows]  # n/a (summary-only runner) draws no bar
        axes.barh(positions + (offset - 1) * 0.27, values, height=0.27, color=color, label=name)
    axes.set_yticks(positions, [_label(r) for r in rows], fontsize=8)
    axes.set_xlabel("latency (ms), latest run")
    axes.legend(fontsize=7)
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def _scatter_plot(rows: Sequence["ResultRow"]) -> str | None:
    import matplotlib.pyplot as plt

    points = [r for r in rows if r.accuracy is not None]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(6, 3.4))
    for index, row in enumerate(points):
        axes.scatter(row.p50, row.accuracy, color=f"C{index % 10}", s=40)
        axes.annotate(f"{row.device}: {row.model}/{row.recipe}", (row.p50, row.accuracy), fontsize=7,
                      xytext=(4, 3), textcoords="offset points")
    axes.set_xlabel("p50 latency (ms)")
    axes.set_ylabel((points[0].accuracy_metric or "accuracy").split(":")[-1])
    axes.grid(alpha=0.3)
    return _png(figure)


def report_context(store: "Store", *, farm: str | None = None, regressions: "RegressionReport | None" = None) -> dict[str, Any]:
    """Everything the template shows (plots already rendered)."""
    import matplotlib

    matplotlib.use("Agg")
    runs = store.runs(farm)
    if not runs:
        raise InputError(f"no runs{f' of farm {farm!r}' if farm else ''} in {store.url}")
    latest = runs[-1]
    farm = latest.farm
    runs = [r for r in runs if r.farm == farm]
    if regressions is None:
        from edgepack.farm.regress import detect

        regressions = detect(store, farm=farm, run_id=latest.id)
    shown = {r.id for r in runs[-HISTORY_RUNS:]}
    run_order = {r.id: i + 1 for i, r in enumerate(runs)}
    results = [r for r in store.results(farm=farm) if r.run_id in shown]
    flagged = {f.key: f for f in regressions.regressions}
    jobs = store.jobs(latest.id)
    devices_info = store.devices()
    devices = []
    for device in sorted({j.spec.device for j in jobs} | {r.device for r in results}):
        history = [r for r in results if r.device == device]
        current = [r for r in history if r.run_id == latest.id]
        info = devices_info.get(device, {})
        planned = [j for j in jobs if j.spec.device == device]
        problems = [j for j in planned if j.status != "ok"]
        state, last_error = device_state(info, planned, problems)
        devices.append({
            "id": device,
            "info": info,
            "state": state,
            "last_error": last_error,
            "problems_summary": f"{len(problems)} of {len(planned)} job(s) without a result" if problems else "",
            "rows": [{"row": r, "regression": flagged.get(r.key)} for r in current],
            "problems": problems,
            "history_png": _history_plot(history, run_order, set(flagged)) if history else None,
            "percentile_png": _percentile_plot(current) if current else None,
        })
    latest_rows = [r for r in results if r.run_id == latest.id]
    targets = [{"id": target, "scatter_png": _scatter_plot([r for r in latest_rows if r.target == target])}
               for target in sorted({r.target for r in latest_rows})]
    counts: dict[str, int] = defaultdict(int)
    for job in jobs:
        counts[job.status] += 1
    return {"farm": farm, "run": latest, "runs": len(runs), "counts": dict(sorted(counts.items())),
            "regressions": regressions, "devices": devices, "targets": targets, "database": store.url,
            "failing": [d for d in devices if d["state"] in ("failed", "failing")]}


def device_state(info: dict[str, Any], planned: Sequence[Any], problems: Sequence[Any]) -> tuple[str, str | None]:
    """(state, last error) of a device in the latest run: ``failed`` when it was planned and produced no
    result or is offline, ``failing`` when some of its jobs have no result, ``ok``, or ``not in this run``."""
    errors = [j.error for j in problems if j.error]
    last_error = errors[-1] if errors else (f"job {problems[-1].status}" if problems else None)
    if info.get("status") == "offline" and planned:
        return "failed", info.get("reason") or last_error
    if not planned:
        return "not in this run", None
    if problems and len(problems) == len(planned):
        return "failed", last_error or info.get("reason")
    if problems:
        return "failing", last_error or info.get("reason")
    return "ok", None


def render_report(store: "Store", *, farm: str | None = None, regressions: "RegressionReport | None" = None) -> str:
    """The report as one HTML string."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(loader=PackageLoader("edgepack.farm", "templates"),
                              autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return environment.get_template(TEMPLATE).render(**report_context(store, farm=farm, regressions=regressions))


def write_report(store: "Store", out: Path, *, farm: str | None = None, regressions: "RegressionReport | None" = None) -> Path:
    """Render the report and write it atomically to ``out``."""
    return write_atomic(Path(out), render_report(store, farm=farm, regressions=regressions))
