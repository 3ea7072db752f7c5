"""CLI commands of the device farm (``edgepack farm run|regress|report``). Imports stay inside the commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

DB_HELP = ("Results database: sqlite:///PATH, a SQLite file path, or postgresql://user@host/db (default: $EDGEPACK_DB "
           "or a SQLite file in the user data dir).")


def register(app: Any) -> None:
    """Add this subsystem's commands to the top-level Typer ``app``."""
    from edgepack.cli_support import CONTEXT, print_envelope, user_errors

    farm_app = typer.Typer(help="Nightly device farm: run jobs, detect regressions, write the HTML report.",
                           no_args_is_help=True, context_settings=CONTEXT)
    app.add_typer(farm_app, name="farm")

    @farm_app.command("run")
    def farm_run(
        farm_file: Annotated[Path, typer.Argument(help="farm.toml: devices, models, targets/recipes, bench settings.")],
        db: Annotated[Optional[str], typer.Option("--db", help=DB_HELP)] = None,
        ray: Annotated[Optional[str], typer.Option("--ray", help="Ray cluster address (each host advertises device:ID resources).")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue the last unfinished run of this farm.toml, if any.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Export every model for every device's target and recipes, bench it on the device, store the results."""
        from edgepack.farm.config import load_farm
        from edgepack.farm.executors import LocalExecutor, RayExecutor
        from edgepack.farm.nightly import run_farm
        from edgepack.farm.store import open_store

        def say(message: str) -> None:
            print(message, file=sys.stderr if as_json else sys.stdout, flush=True)

        with user_errors("farm run" if as_json else None):
            config = load_farm(farm_file)
            executor = RayExecutor(ray) if ray else LocalExecutor()
            with open_store(db) as store:
                run = run_farm(config, store, executor=executor, resume=resume, progress=say)
        counts = {status: run.count(status) for status in ("ok", "failed", "skipped")}
        if as_json:
            failed = [j for j in run.jobs if j.status == "failed"]
            print_envelope("farm run", {"run_id": run.run_id, "resumed": run.resumed, "exports": run.exports, **counts,
                         "jobs": [{"device": j.spec.device, "model": j.spec.model, "target": j.spec.target,
                                   "recipe": j.spec.recipe, "status": j.status, "attempts": j.attempts, "error": j.error}
                                  for j in run.jobs]}, ok=run.ok,
                            errors=[{"type": "JobFailed", "message": f"{j.spec.device}/{j.spec.model}/{j.spec.target}: {j.error}",
                                     "hint": None, "exit_code": 1} for j in failed])
        else:
            print(f"run {run.run_id}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        if not run.ok:
            raise typer.Exit(1)

    @farm_app.command("regress")
    def farm_regress(
        db: Annotated[Optional[str], typer.Option("--db", help=DB_HELP)] = None,
        farm: Annotated[Optional[str], typer.Option("--farm", help="Farm name (default: the farm of the latest run).")] = None,
        run: Annotated[Optional[int], typer.Option("--run", help="Run to check (default: the latest).")] = None,
        json_out: Annotated[Optional[Path], typer.Option("--json-out", help="Write the findings as JSON here.")] = None,
        junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here (one test case per key).")] = None,
        p50: Annotated[Optional[float], typer.Option(help="Relative p50 increase that matters (default from farm.toml, 0.05).")] = None,
        p99: Annotated[Optional[float], typer.Option(help="Relative p99 increase that matters (default 0.10).")] = None,
        alpha: Annotated[Optional[float], typer.Option(help="U-test significance level (default 0.01).")] = None,
        window: Annotated[Optional[int], typer.Option(help="Baseline: last K results per key (default 7).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    ) -> None:
        """Compare the latest run with its baseline window; exit 1 on a regression or on a job without a result
        (a failing device, named with its last error)."""
        from edgepack.farm.regress import detect
        from edgepack.farm.store import open_store

        with user_errors("farm regress" if as_json else None):
            with open_store(db, create=False) as store:
                report = detect(store, farm=farm, run_id=run,
                                overrides={"p50": p50, "p99": p99, "alpha": alpha, "window": window})
            report.write(json_out, junit)
        if as_json:
            print_envelope("farm regress", report.to_dict(), ok=report.exit_code == 0, errors=[] if report.exit_code == 0
                            else [{"type": "Regression", "message": report.summary(), "hint": None,
                                   "exit_code": report.exit_code}])
        else:
            for finding in report.findings:
                print(f"{finding.status:>20}  {finding.name}: {'; '.join(finding.reasons)}")
            for device, why in sorted(report.failed_devices.items()):
                print(f"device {device} produced no result tonight: {why}")
            print(report.summary())
        raise typer.Exit(report.exit_code)

    @farm_app.command("report")
    def farm_report(
        out: Annotated[Path, typer.Option("--out", help="HTML file to write.")],
        db: Annotated[Optional[str], typer.Option("--db", help=DB_HELP)] = None,
        farm: Annotated[Optional[str], typer.Option("--farm", help="Farm name (default: the farm of the latest run).")] = None,
    ) -> None:
        """Write one self-contained HTML report (tables, latency history, percentiles, accuracy x latency)."""
        from edgepack.farm.report import write_report
        from edgepack.farm.store import open_store

        with user_errors():
            with open_store(db, create=False) as store:
                path = write_report(store, out, farm=farm)
        print(f"report: {path}")
