"""What a search leaves behind: ``front.json``, ``front.png`` (matplotlib, Agg), ``chosen-recipe.toml``, and the
Rich table the CLI prints. Every file is written through a temporary name and a rename."""

from __future__ import annotations

import io

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack._fs import write_atomic
from edgepack.compress.recipe import RecipeBook, load_recipe_file
from edgepack.search.recipe_file import write_recipe

if TYPE_CHECKING:
    from edgepack.search.engine import SearchResult
    from edgepack.search.trial import Trial

FRONT_JSON = "front.json"
FRONT_PNG = "front.png"
CHOSEN_RECIPE = "chosen-recipe.toml"


def write_outputs(result: "SearchResult", book: RecipeBook) -> None:
    """Write the chosen recipe, the plot and the JSON report into ``result.out`` (fills ``result.outputs``)."""
    out = result.out
    chosen_path = out / CHOSEN_RECIPE
    if result.chosen is not None and result.chosen.recipe_file:
        recipe = load_recipe_file(out / result.chosen.recipe_file)
        t = result.chosen
        header = (f"chosen by edgepack search for target '{result.target}' under {_constraints_text(result)}\n"
                  f"measured: {t.metric} drop {t.drop:.4f}, p50 {t.latency_ms:.4f} ms, {t.size_bytes} bytes\n"
                  f"use with: edgepack export SOURCE --target {result.target} --recipe {CHOSEN_RECIPE}")
        result.chosen_recipe = write_recipe(recipe, chosen_path, header)
        result.outputs["recipe"] = chosen_path
    else:
        chosen_path.unlink(missing_ok=True)  # a stale choice from an earlier run must not survive
        result.chosen_recipe = None
    result.outputs["plot"] = plot_front(result, out / FRONT_PNG)
    result.outputs["json"] = out / FRONT_JSON
    write_atomic(out / FRONT_JSON, json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str) + "\n")


def _constraints_text(result: "SearchResult") -> str:
    c = result.constraints
    parts = [f"max drop {c.max_drop:g}"]
    if c.latency_budget_ms is not None:
        parts.append(f"p50 <= {c.latency_budget_ms:g} ms")
    if c.size_budget_mb is not None:
        parts.append(f"size <= {c.size_budget_mb:g} MB")
    return ", ".join(parts)


def plot_front(result: "SearchResult", path: Path) -> Path:
    """Latency (x) against metric drop (y) of every full-fidelity trial; marker area follows size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [t for t in result.final if t.measured]
    front = {id(t) for t in result.front}
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    figure.subplots_adjust(right=0.66)  # the key of numbered points goes right of the axes
    try:
        if measured:
            largest = max(t.size_bytes or 1 for t in measured)
            for group, colour, label in ((False, "#bbbbbb", "dominated"), (True, "#1f77b4", "Pareto front")):
                points = [t for t in measured if (id(t) in front) == group]
                if points:
                    axes.scatter([t.latency_ms for t in points], [t.drop for t in points], c=colour, label=label,
                                 s=[30 + 270 * (t.size_bytes or 0) / largest for t in points], alpha=0.8,
                                 edgecolors="black", linewidths=0.5)
            _number_points(figure, axes, measured)
            if result.default.measured:
                axes.scatter([result.default.latency_ms], [result.default.drop], marker="s", facecolors="none",
                             edgecolors="#d62728", s=160, label="profile default")
            if result.chosen is not None:
                axes.scatter([result.chosen.latency_ms], [result.chosen.drop], marker="*", c="#2ca02c", s=220,
                             edgecolors="black", label="chosen", zorder=5)
        axes.axhline(result.constraints.max_drop, color="#d62728", linestyle="--", linewidth=0.8)
        if result.constraints.latency_budget_ms is not None:
            axes.axvline(result.constraints.latency_budget_ms, color="#d62728", linestyle="--", linewidth=0.8)
        axes.set_xlabel("p50 latency (ms, measured)")
        axes.set_ylabel("metric drop vs fp32 (measured)")
        axes.set_title(f"{result.target}: accuracy x latency x size (marker area = size)", fontsize=9)
        axes.grid(alpha=0.3)
        if measured:
            axes.legend(fontsize=7, loc="best")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        write_atomic(path, buffer.getvalue())
    finally:
        plt.close(figure)
    return path


LABEL_OFFSETS = ((4, 3), (4, -9), (-10, 3), (-10, -9), (4, 10), (-10, 10), (4, -16), (-10, -16), (12, -3), (-18, -3))
"""Where a point's number may go (offset points), tried in order until it overlaps no number already placed."""


def _number_points(figure: Any, axes: Any, trials: list[Any]) -> list[Any]:
    """Number each point (1..n) at the first free offset of :data:`LABEL_OFFSETS` and list ``n: label`` right
    of the axes, so labels never overlap however close the points are (a number with no free spot is left
    off the plot; the key still names it). Returns the placed number annotations."""
    renderer = figure.canvas.get_renderer()
    placed: list[Any] = []
    boxes: list[Any] = []
    for number, trial in enumerate(trials, start=1):
        for offset in LABEL_OFFSETS:
            text = axes.annotate(str(number), (trial.latency_ms, trial.drop), fontsize=6, xytext=offset,
                                 textcoords="offset points")
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in boxes):
                placed.append(text)
                boxes.append(box)
                break
            text.remove()
    key = "\n".join(f"{n:>2}  {t.label}" for n, t in enumerate(trials, start=1))
    figure.text(0.68, 0.95, key, fontsize=6, family="monospace", va="top", ha="left")
    return placed


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def front_table(result: "SearchResult") -> Any:
    """A Rich table of the full-fidelity trials, front first, with the default and the choice marked."""
    from rich.table import Table

    front = {id(t) for t in result.front}
    rows: list[Trial] = sorted(result.final, key=lambda t: (id(t) not in front, not t.measured, t.latency_ms or 0.0))
    candidates = len({t.key for t in result.trials})
    table = Table(title=f"search {result.target}: {candidates} candidates, {len(result.final)} fully measured, "
                        f"front of {len(result.front)} ({_constraints_text(result)})",
                  caption="* chosen   F on the Pareto front (no other candidate is better in drop, latency and size)")
    for column in ("", "candidate", "precision", "drop", "p50 ms (95% CI)", "size KiB", "notes"):
        table.add_column(column)
    for t in rows:
        mark = "*" if t is result.chosen else ("F" if id(t) in front else "")
        ci = f" ({t.latency_ci95[0]:.3f}-{t.latency_ci95[1]:.3f})" if t.latency_ci95 else ""
        notes = []
        if t is result.default:
            notes.append("profile default")
        if t.measured:
            notes += result.constraints.violations(*t.objectives())
        elif t.error:
            notes.append(t.error[:80])
        table.add_row(mark, t.label, t.precision or "-", _cell(t.drop, ".4f"),
                      (_cell(t.latency_ms, ".3f") + ci), _cell(None if t.size_bytes is None else t.size_bytes / 1024, ".1f"),
                      "; ".join(notes))
    return table
