"""The ``edgepack`` command line: parses arguments, calls :mod:`edgepack.api`, prints tables or JSON.

Heavy toolchains are imported only inside commands so ``edgepack --help`` stays fast. Every
:class:`~edgepack.errors.EdgepackError` becomes one line on stderr and exit code 2 (1 for a bundle that
does not verify); a run where some target failed exits 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from edgepack import signals
from edgepack.errors import EdgepackError, Terminated

app = typer.Typer(
    name="edgepack",
    help="Compress, export, verify and bundle one trained model for many edge targets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
targets_app = typer.Typer(help="Inspect the target registry.", no_args_is_help=True)
app.add_typer(targets_app, name="targets")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


@contextmanager
def _user_errors() -> Iterator[None]:
    """One line on stderr and the error's exit code for every expected failure; SIGINT/SIGTERM unwind
    (removing staged files) and exit 130/143, even where a toolchain swallowed them
    (:func:`edgepack.signals.listen`)."""
    with signals.listen():
        try:
            yield
        except EdgepackError as exc:
            message = " ".join(str(exc).split())
            print(f"edgepack: error: {message}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("edgepack: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except Terminated as exc:
            print("edgepack: terminated", file=sys.stderr)
            raise typer.Exit(128 + exc.signum) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@targets_app.command("list")
def targets_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table (the README's target table).")] = False,
) -> None:
    """List every target profile."""
    from edgepack.targets.registry import load_registry

    with _user_errors():
        registry = load_registry()
    if as_json:
        _print_json([_profile_row(p) for p in registry])
        return
    if markdown:
        from edgepack.exporters.registry import available_runtimes
        from edgepack.targets.table import markdown_table

        sys.stdout.write(markdown_table(registry, set(available_runtimes())))
        return
    from rich.table import Table

    table = Table(title=f"{len(registry)} targets")
    for column in ("id", "name", "runtime", "format", "accelerators", "precisions", "recipes"):
        table.add_column(column)
    for profile in registry:
        row = _profile_row(profile)
        table.add_row(row["id"], row["name"], row["runtime"], row["format"], ", ".join(row["accelerators"]),
                      ", ".join(row["precisions"]), " → ".join(row["recipes"]))
    _console().print(table)


def _profile_row(profile: Any) -> dict[str, Any]:
    return {
        "id": profile.id,
        "name": profile.name,
        "runtime": profile.runtime,
        "format": profile.format,
        "accelerators": list(profile.accelerators),
        "precisions": profile.precisions,
        "recipes": list(profile.recipes),
    }


@targets_app.command("show")
def targets_show(
    target_id: Annotated[str, typer.Argument(metavar="ID", help="Target id, e.g. jetson-orin.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show one target profile in full."""
    from edgepack.targets.registry import load_registry

    with _user_errors():
        profile = load_registry().get(target_id)
    data = profile.model_dump(mode="json", exclude_none=True)
    if as_json:
        _print_json(data)
        return
    console = _console()
    console.print(f"[bold]{profile.id}[/bold] — {profile.name}")
    console.print(f"runtime {profile.runtime} · format {profile.format} · memory {profile.memory_mb} MB · "
                  f"dynamic shapes {'yes' if profile.dynamic_shapes else 'no'} · layout {profile.input_layout}")
    if profile.peak_tops:
        console.print("peak TOPS: " + ", ".join(f"{k} {v:g}" for k, v in profile.peak_tops.items()))
    console.print("recipes: " + " → ".join(profile.recipes))
    console.print("toolchain: " + (", ".join(f"{k}{v}" for k, v in profile.toolchain.items()) or "-"))
    for name, acc in profile.accelerators.items():
        ops = "all ops" if acc.all_ops else f"{len(acc.ops)} ops"
        console.print(f"  accelerator [bold]{name}[/bold] ({acc.kind}): {', '.join(acc.precisions)}; {ops}"
                      + (f" [{acc.source}]" if acc.source else ""))
    for key, src in profile.sources.items():
        console.print(f"  source {key}: {src.title} <{src.url}>")
    for note in profile.notes:
        console.print(f"  note: {note}")


@targets_app.command("check")
def targets_check(
    source: Annotated[str, typer.Argument(help="Model source, as for 'edgepack export'.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target id.")],
    inputs: Annotated[Optional[list[str]], typer.Option("--input", help="NAME:1x3x224x224:float32 (repeatable).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Weights for torchvision/timm/factory sources.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Precheck where SOURCE's ops would run on each accelerator of TARGET (no recipe chain, no bundle)."""
    from edgepack import api

    with _user_errors():
        report = api.check(source, target, weights=weights, inputs=inputs or ())
    data = None if report is None else report.to_dict()
    if as_json:
        _print_json(data)
        return
    console = _console()
    if data is None:
        console.print(f"{target}: no accelerator with an op table; every op runs on the CPU")
        return
    console.print(f"{target}: {data['total_ops']} ops checked ({data['vocabulary']}, {data['checked_on']})")
    for acc in data["accelerators"]:
        console.print(f"  {acc['accelerator']} ({acc['kind']}): {acc['supported']}/{data['total_ops']} ops, "
                      f"{acc['fallback_fraction']:.0%} fall back to the CPU")
        for fallback in acc["fallback"][:10]:
            console.print(f"    {fallback['op']} [{fallback['type']}]: {fallback['reason']}")
        if len(acc["fallback"]) > 10:
            console.print(f"    ... and {len(acc['fallback']) - 10} more")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, str], None]]:
    if not enabled:
        yield lambda target, stage: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=_console(stderr=True), transient=True) as progress:
        tasks: dict[str, Any] = {}

        def update(target: str, stage: str) -> None:
            for other, task in tasks.items():
                if other != target:
                    progress.update(task, visible=False)
            if target not in tasks:
                tasks[target] = progress.add_task(f"{target}: {stage}")
            progress.update(tasks[target], description=f"{target}: {stage}", visible=True)

        yield update


@app.command()
def export(
    source: Annotated[str, typer.Argument(help="torchvision:NAME, timm:NAME, file.py:factory, model.onnx, model.pt2, hf:DIR or demo:digits")],
    target: Annotated[list[str], typer.Option("--target", "-t", help="Target id (repeatable).")],
    calib: Annotated[Optional[Path], typer.Option(help="Calibration data: .npz/.npy, or an image folder DIR/<class>/<image>.")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval", help="Labelled evaluation data (.npz with 'labels', or an image folder DIR/<class>/<image>), or FILE.py:function / package.module:function scoring a predictor.")] = None,
    metric: Annotated[str, typer.Option(help="Gate metric: auto (top-1 with labels, else fidelity), top1, top5 (any topK), cosine (vs fp32 outputs).")] = "auto",
    max_drop: Annotated[float, typer.Option(help="Largest allowed metric drop (absolute; 0.01 = 1 point).")] = 0.01,
    max_slowdown: Annotated[float, typer.Option(help="How much slower than the same runtime's fp32 artifact a compressed one may be (0.05 = 5 %, for timing noise).")] = 0.05,
    out: Annotated[Path, typer.Option(help="Directory that receives NAME.edgepack/.")] = Path("dist"),
    name: Annotated[Optional[str], typer.Option(help="Bundle name (default: the model's).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help=".safetensors or state-dict .pt for torchvision/timm/factory sources.")] = None,
    inputs: Annotated[Optional[list[str]], typer.Option("--input", help="NAME:1x3x224x224:float32 (repeatable).")] = None,
    sign_key: Annotated[Optional[Path], typer.Option(help="Ed25519 private key (from 'edgepack keygen'): writes manifest.sig.")] = None,
    recipe: Annotated[Optional[list[str]], typer.Option("--recipe", help="Recipe name or .toml file (repeatable, in order): replaces every target's recipe chain.")] = None,
    profile: Annotated[Optional[list[Path]], typer.Option("--profile", help="Extra target profile TOML (repeatable): your own device, may 'extends' a shipped one.")] = None,
    archive: Annotated[bool, typer.Option(help="Write NAME.edgepack.zip instead of the NAME.edgepack/ folder.")] = False,
    bench: Annotated[Optional[str], typer.Option(help="Benchmark what was exported on this runner (host, ssh://...) and put the summary in the manifest.", metavar="RUNNER")] = None,
    fail_on_fallback: Annotated[Optional[float], typer.Option(help="Fail a target when more than PCT % of its ops fall back to the CPU (placement report; for CI).", metavar="PCT")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Export every target even when the export cache has it.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Export SOURCE to every --target and write one verified bundle."""
    from edgepack import api
    from edgepack.targets.registry import load_registry

    with _user_errors(), _progress(not as_json and sys.stderr.isatty()) as progress:
        registry = load_registry(extra=profile or ())
        result = api.export(source, target, calib=calib, eval_data=eval_data, metric=metric, max_drop=max_drop, max_slowdown=max_slowdown, out=out,
                            name=name, weights=weights, inputs=inputs or (), recipe_chain=recipe or (), sign_key=sign_key,
                            cache=not no_cache, archive=archive, fail_on_fallback=fail_on_fallback, bench=bench, registry=registry,
                            progress=progress)
    if as_json:
        _print_json({"bundle": str(result.bundle), "ok": result.ok, "cached": result.cached, "manifest": result.manifest})
    else:
        _print_export_table(result)
    raise typer.Exit(0 if result.ok else 1)


def _human_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


def _placement_text(placement: dict[str, Any] | None) -> str:
    if not placement:
        return "cpu"
    if "error" in placement:
        return "not checked"
    total = placement["total_ops"]
    return ", ".join(f"{a['accelerator']} {a['supported']}/{total}" for a in placement["accelerators"]) or "cpu"


def _print_export_table(result: Any) -> None:
    from rich.table import Table

    table = Table(title=f"bundle {result.bundle}")
    benched = any("bench" in entry for entry in result.manifest["targets"].values())
    for column in ("target", "precision", "size", "parity", "accuracy", "placement", *(["p50 ms"] if benched else []), "status"):
        table.add_column(column)
    for entry_id, entry in result.manifest["targets"].items():
        artifact = entry["artifact"] or {}
        parity = entry["parity"]
        gate = entry["gate"]
        parity_text = f"cos {parity['mean_cosine']:.5f}, rel {parity['max_rel_error']:.1e}" if parity else "-"
        if gate:
            label = "" if gate["kind"] == "accuracy" else " (fidelity)"
            accuracy = f"{gate['value']:.4f} vs {gate['baseline']:.4f}{label}"
        else:
            accuracy = "-"
        if entry["status"] == "ok":
            status = "[green]ok[/green]" + (f" ({entry['recipe']})" if entry["recipe"] else "")
            if entry_id in result.cached:
                status += " · cached"
            if entry["runnable_here"] != "yes":
                status += " · not run here"
        else:
            status = f"[red]{entry['status']}[/red]: {entry['error']}"
        bench = entry.get("bench") or {}
        latency = [f"{bench['p50']:.3f}" if bench.get("measured") else "n/a"] if benched else []
        table.add_row(entry_id, artifact.get("precision", "-"), _human_bytes(artifact["bytes"]) if artifact else "-",
                      parity_text, accuracy, _placement_text(entry.get("placement")), *latency, status)
    _console().print(table)


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="Path to NAME.edgepack/.")],
    pub: Annotated[Optional[Path], typer.Option(help="Ed25519 public key: also check manifest.sig.")] = None,
) -> None:
    """Re-hash every file of BUNDLE against its manifest; exit 1 naming the first mismatch."""
    from edgepack import api

    with _user_errors():
        result = api.verify(bundle, public_key=pub)
    signed = ", signature ok" if result.signed else ""
    print(f"{result.bundle}: ok ({result.files_checked} files{signed}, targets: {', '.join(result.targets) or '-'})")


@app.command()
def keygen(path: Annotated[Path, typer.Argument(help="Where to write the private key (PATH.pub gets the public key).")]) -> None:
    """Create an Ed25519 key pair for signing bundles."""
    from edgepack.bundle.signing import generate_keypair

    with _user_errors():
        private, public = generate_keypair(path)
    print(f"private key: {private} (keep it secret)\npublic key:  {public}")


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Path to NAME.edgepack/.")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Target id (default: every target with an artifact).")] = None,
    runner: Annotated[str, typer.Option(help="host, ssh://user@host[:port]?known_hosts=FILE&identity=KEY, adb://SERIAL or ios://UDID")] = "host",
    accelerator: Annotated[Optional[str], typer.Option(help="Accelerator id of the target profile (adb: cpu, gpu, nnapi, htp; ios: all, ane, gpu, cpu).")] = None,
    iterations: Annotated[int, typer.Option(help="Minimum timed iterations.")] = 100,
    seconds: Annotated[float, typer.Option(help="Minimum timed seconds.")] = 2.0,
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads (default: the runtime's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    db: Annotated[Optional[str], typer.Option("--db", help="Also store the results in this farm database (sqlite:///PATH or postgresql://...).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Device name stored with --db (default: the runner URI).")] = None,
) -> None:
    """Measure latency percentiles (with 95 % CIs), cold start, memory and energy of a bundle's artifacts."""
    from edgepack.device_bench.bench import bench_bundle
    from edgepack.device_bench.config import BenchConfig

    with _user_errors(), _progress(not as_json and sys.stderr.isatty()) as progress:
        config = BenchConfig(min_iters=iterations, min_seconds=seconds, threads=threads, accelerator=accelerator)
        results = bench_bundle(bundle, target, runner, config, progress=progress)
        if db is not None:
            from edgepack.device_bench.store import record_bench_results

            record_bench_results(db, bundle, results, device=device)
    if as_json:
        _print_json([r.to_dict() for r in results])
        return
    from rich.table import Table

    table = Table(title=f"{bundle} on {runner}")
    for column in ("target", "precision", "p50 ms (95% CI)", "p90", "p99 (95% CI)", "cold start", "peak MB", "energy"):
        table.add_column(column)
    for r in results:
        energy = f"{r.energy_mj_per_inference:.3f} mJ" if r.energy_mj_per_inference is not None else "n/a*"
        cold = f"{r.cold_start_ms:.1f} ms" if r.cold_start_ms is not None else "n/a"
        memory = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "n/a"
        p50 = f"{r.p50:.3f}" + (f" ({r.ci95_p50[0]:.3f}-{r.ci95_p50[1]:.3f})" if r.ci95_p50 is not None else "")
        p90 = f"{r.p90:.3f}" if r.p90 is not None else "n/a"
        p99 = f"{r.p99:.3f} ({r.ci95_p99[0]:.3f}-{r.ci95_p99[1]:.3f})" if r.p99 is not None and r.ci95_p99 else "n/a"
        table.add_row(r.target, r.precision, p50, p90, p99, cold, memory, energy)
    console = _console()
    console.print(table)
    for reason in sorted({r.energy_reason for r in results if r.energy_reason}):
        console.print(f"* energy not measurable here: {reason}")
    for reason in sorted({r.percentiles_reason for r in results if r.percentiles_reason}):
        console.print(f"* n/a: {reason}")
    for r in results:
        if r.clock != "wall" and r.wall_p50_ms is not None:
            console.print(f"* {r.target}: latencies on the runtime's clock ({r.clock}); "
                          f"the whole Python call took p50 {r.wall_p50_ms:.3f} ms")


def _register_subsystems() -> None:
    """Commands owned by other subsystems live beside their code; each module adds its own (lazily importing)."""
    from edgepack.device_bench import farm_cli
    from edgepack.package import cli as package_cli
    from edgepack.search import cli as search_cli

    for module in (package_cli, farm_cli, search_cli):
        module.register(app)


_register_subsystems()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
