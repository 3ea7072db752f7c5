"""CLI command of the recipe search (``edgepack search``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgepack.farm.cli import DB_HELP


def search(
    source: Annotated[str, typer.Argument(help="torchvision:NAME, timm:NAME, file.py:factory, model.onnx, model.pt2, hf:DIR or demo:digits")],
    target: Annotated[str, typer.Option("--target", "-t", metavar="ID", help="Target id whose recipe space is searched (one; any case).")],
    runner: Annotated[str, typer.Option(help="Where latency is measured: host, ssh://user@host, adb://SERIAL, ios://UDID.")] = "host",
    calib: Annotated[Optional[Path], typer.Option(help="Calibration data (.npz/.npy); default: the source's built-in data.")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval", help="Labelled evaluation data (.npz with 'labels'); default: the source's built-in data.")] = None,
    max_drop: Annotated[float, typer.Option(help="Largest allowed metric drop vs fp32 (absolute; 0.01 = 1 point).")] = 0.01,
    latency_budget_ms: Annotated[Optional[float], typer.Option(help="Largest allowed p50 latency on the runner (ms).")] = None,
    size_budget_mb: Annotated[Optional[float], typer.Option(help="Largest allowed artifact size (MB, 10^6 bytes).")] = None,
    trials: Annotated[int, typer.Option(help="Distinct candidates evaluated cheaply (rung 0); 1/eta of them get the full evaluation.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the candidate order (the same seed tries the same candidates).")] = 0,
    eta: Annotated[int, typer.Option(help="Successive-halving rate: keep 1/eta of the rung-0 candidates.")] = 2,
    iterations: Annotated[int, typer.Option(help="Minimum timed iterations of the full latency run.")] = 100,
    seconds: Annotated[float, typer.Option(help="Minimum timed seconds of the full latency run.")] = 2.0,
    tie_tolerance: Annotated[float, typer.Option(help="Latencies within this fraction of the fastest count as equally fast (timing noise); ties go to the lower drop, then the smaller artifact.")] = 0.05,
    out: Annotated[Path, typer.Option(help="Search folder: journal (resumable), trial bundles, front.json/png, chosen-recipe.toml.")] = Path("search"),
    db: Annotated[Optional[str], typer.Option("--db", help=DB_HELP)] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not record trials in the results database.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Export every candidate even when the export cache has it.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Search TARGET's compression recipes with measured accuracy, latency and size; write the Pareto front and
    the fastest recipe within the constraints (OUT/chosen-recipe.toml, for 'edgepack export --recipe')."""
    from edgepack.cli_support import make_console, one_target, print_envelope, user_errors
    from edgepack.device_bench.config import BenchConfig
    from edgepack.search.engine import SearchSettings, search as run_search
    from edgepack.search.report import front_table

    with user_errors("search" if as_json else None):
        target = one_target(target, "search") or target
        quick = BenchConfig(min_iters=max(10, iterations // 5), min_seconds=seconds / 5)
        settings = SearchSettings(trials=trials, seed=seed, eta=eta, quick_bench=quick, tie_tolerance=tie_tolerance,
                                  bench=BenchConfig(min_iters=iterations, min_seconds=seconds))
        # toolchains print to stdout (ONNX Runtime's entropy calibration): keep stdout for the report / --json
        with _progress_bar(not as_json and sys.stderr.isatty()) as progress, redirect_stdout(sys.stderr):
            result = run_search(source, target, runner=runner, calib=calib, eval_data=eval_data, max_drop=max_drop,
                                latency_budget_ms=latency_budget_ms, size_budget_mb=size_budget_mb, out=out,
                                settings=settings, db=db, record=not no_store, cache=not no_cache, progress=progress)
    if as_json:
        ok = result.chosen is not None
        print_envelope("search", result.to_dict(), ok=ok, errors=[] if ok else [
            {"type": "NothingChosen", "message": f"nothing chosen: {result.reason}", "hint": None, "exit_code": 1}])
    else:
        console = make_console()
        console.print(front_table(result))
        if result.chosen is not None:
            console.print(f"chosen: {result.chosen.label} -> {result.chosen_recipe}")
            # one unbroken line, whatever the terminal width: it is meant to be copied and run
            print(f"  edgepack export {source} --target {target} --recipe {result.chosen_recipe}", flush=True)
        else:
            console.print(f"[red]nothing chosen[/red]: {result.reason}")
        console.print(f"front: {result.outputs.get('json')}, plot: {result.outputs.get('plot')}")
    raise typer.Exit(0 if result.chosen is not None else 1)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[Any], None]]:
    """A Rich progress bar whose description shows the stage and the best trial so far."""
    if not enabled:
        yield lambda update: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgepack.cli_support import make_console

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=make_console(stderr=True), transient=True) as bar:
        task = bar.add_task("search", total=None)

        def update(state: Any) -> None:
            best = state.best
            best_text = (f" · best {best.label}: {best.latency_ms:.3f} ms, drop {best.drop:.4f}" if best is not None
                         else "")
            bar.update(task, completed=state.done, total=state.total, description=f"{state.stage}{best_text}")

        yield update


def register(app: Any) -> None:
    """Add this subsystem's commands to the top-level Typer ``app``."""
    app.command("search")(search)
