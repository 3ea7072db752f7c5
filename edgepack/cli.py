"""The ``edgepack`` command line: parses arguments, calls :mod:`edgepack.api`, prints tables or JSON.

Heavy toolchains are imported only inside commands so ``edgepack --help`` stays fast. Every
:class:`~edgepack.errors.EdgepackError` becomes one line on stderr and exit code 2 (1 for a bundle that
does not verify); a run where some target failed exits 1.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from edgepack.cli_support import (
    CONTEXT,
    VERBOSE,
    canonical_ids,
    error_record,
    go_offline,
    make_console,
    print_envelope,
    split_targets,
    user_errors,
)
from edgepack.errors import InputError

app = typer.Typer(
    name="edgepack",
    help="Compress, export, verify and bundle one trained model for many edge targets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
)
targets_app = typer.Typer(help="Inspect the target registry.", no_args_is_help=True, context_settings=CONTEXT)
app.add_typer(targets_app, name="targets")

TARGETS_METAVAR = "ID[,ID...]"


def _plain_metavars() -> None:
    """Help shows ``TEXT``/``PATH``/``FLOAT`` (or an option's own metavar), never Python types such as
    ``<list[str]>``, and nothing after a plain flag (Typer's default is ``<bool>``)."""
    from typer.core import TyperArgument, TyperOption

    names = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "file": "FILE",
             "directory": "DIR", "bool": "BOOLEAN"}

    def plain(label: str | None) -> str | None:
        if not label:
            return label
        inner = label.strip("<>")
        suffix = "..." if label.endswith("...") else ""
        inner = inner.removesuffix("...").strip("<>")
        if inner.startswith("list[") and inner.endswith("]"):
            inner = inner[5:-1]
        if inner.startswith("<") or not label.startswith("<"):
            return label
        return names.get(inner.lower(), inner.upper()) + suffix

    def option_type(self: Any, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return None
        return plain(original_option(self, ctx))

    def argument_type(self: Any, ctx: Any) -> str | None:
        return plain(original_argument(self, ctx))

    if getattr(TyperOption, "_edgepack_plain", False):
        return
    original_option = TyperOption.display_type_rich
    original_argument = TyperArgument.display_type_rich
    TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    TyperArgument.display_type_rich = argument_type  # type: ignore[method-assign]
    TyperOption._edgepack_plain = True  # type: ignore[attr-defined]


_plain_metavars()


def _quiet_toolchains() -> None:
    """Silence the toolchains' start-up chatter (TensorFlow/absl INFO lines, coremltools' version warnings,
    scikit-learn warnings) in this process; environment variables reach the converter subprocesses too.
    ``TF_ENABLE_ONEDNN_OPTS`` is left alone: it changes numerics. edgepack's own warnings are untouched."""
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")
    for name in ("absl", "tensorflow", "coremltools", "sklearn", "h5py", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "absl.logging" in sys.modules:
        sys.modules["absl.logging"].set_verbosity("error")  # type: ignore[attr-defined]
    for message in (r".*has not been tested with coremltools", r"Failed to load _ML", r".*scikit-learn",
                    r".*oneDNN custom operations"):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", module=r"sklearn(\..*)?")
    warnings.filterwarnings("ignore", module=r"coremltools(\..*)?")
    warnings.filterwarnings("ignore", message=r"Trying to unpickle estimator")  # sklearn InconsistentVersionWarning


def _version(value: bool) -> None:
    if value:
        from edgepack.version import __version__

        print(f"edgepack {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version)] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show the toolchains' native start-up "
                                          "log lines (hidden by default).")] = False,
) -> None:
    """Compress, export, verify and bundle one trained model for many edge targets."""
    VERBOSE.on = verbose
    _quiet_toolchains()


def _fits(console: Any, renderable: Any) -> bool:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10_000), renderable).maximum <= console.width


def _print_rows(console: Any, title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    """A table when it fits the terminal; otherwise each row stacked: its first cell on one line, the other
    cells as ``column: value`` lines under it. Nothing is ever cut (long cells fold)."""
    from rich.table import Table
    from rich.text import Text

    width = max((len(Text.from_markup(r[0]).plain) for r in rows), default=0)
    table = Table(title=title)
    for index, column in enumerate(columns):
        if index == 0:
            table.add_column(column, no_wrap=True, min_width=max(width, len(column)))
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    if _fits(console, table):
        console.print(table)
        return
    if title:
        console.print(title)
    label = max(len(c) for c in columns)
    for row in rows:
        console.print(f"[bold]{columns[0]:<{label + 4}}[/bold]{row[0]}", overflow="fold")
        for column, cell in zip(columns[1:], row[1:]):
            if cell and Text.from_markup(cell).plain not in ("", "-"):
                console.print(f"  {column:<{label}}  {cell}", overflow="fold")


@targets_app.command("list")
def targets_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table (the README's target table).")] = False,
) -> None:
    """List every target profile."""
    from edgepack.targets.registry import load_registry

    with user_errors("targets list" if as_json else None):
        registry = load_registry()
    if as_json:
        print_envelope("targets list", [_profile_row(p) for p in registry])
        return
    if markdown:
        from edgepack.exporters.registry import available_runtimes
        from edgepack.targets.table import markdown_table

        sys.stdout.write(markdown_table(registry, set(available_runtimes())))
        return
    from rich.markup import escape

    rows = []
    for profile in registry:
        row = _profile_row(profile)
        rows.append([escape(row["id"]), escape(row["name"]), row["runtime"], row["format"],
                     ", ".join(row["accelerators"]), ", ".join(row["precisions"]), " → ".join(row["recipes"])])
    _print_rows(make_console(), f"{len(registry)} targets",
                ["id", "name", "runtime", "format", "accelerators", "precisions", "recipes"], rows)


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
    target_id: Annotated[str, typer.Argument(metavar="ID", help="Target id, e.g. jetson-orin (any case).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show one target profile in full."""
    from edgepack.targets.registry import load_registry

    with user_errors("targets show" if as_json else None):
        profile = load_registry().get(target_id)
    data = profile.model_dump(mode="json", exclude_none=True)
    if as_json:
        print_envelope("targets show", data)
        return
    console = make_console()
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
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Model source, as for 'edgepack export'.")],
    target: Annotated[list[str], typer.Option("--target", "-t", metavar=TARGETS_METAVAR, help="Target id (repeatable, or comma-separated).")],
    inputs: Annotated[Optional[list[str]], typer.Option("--input", metavar="SPEC", help="NAME:1x3x224x224:float32 (repeatable).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Weights for torchvision/timm/factory sources.")] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="torchvision/timm: export the untrained architecture instead of the pretrained weights.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never download (pretrained weights must be in the local cache); same as EDGEPACK_OFFLINE=1.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Precheck where SOURCE's ops would run on each accelerator of TARGET (no recipe chain, no bundle)."""
    from edgepack import api

    reports: dict[str, Any] = {}
    with user_errors("targets check" if as_json else None):
        targets = split_targets(target)
        if not targets:
            raise InputError("no --target given", hint="run 'edgepack targets list'")
        for one in targets:
            go_offline(offline)
            report = api.check(source, one, weights=weights, random_weights=random_weights, inputs=inputs or ())
            reports[one] = None if report is None else report.to_dict()
    if as_json:
        print_envelope("targets check", reports[targets[0]] if len(targets) == 1 else reports)
        return
    console = make_console()
    for one, data in reports.items():
        if data is None:
            console.print(f"{one}: no accelerator with an op table; every op runs on the CPU")
            continue
        console.print(f"{one}: {data['total_ops']} ops of the fp32 graph checked ({data['vocabulary']}, "
                      f"{data['checked_on']}); a quantized artifact may place differently: the export summary's "
                      "placement column judges what ships")
        for acc in data["accelerators"]:
            console.print(f"  {acc['accelerator']} ({acc['kind']}): {acc['supported']}/{data['total_ops']} ops, "
                          f"{acc['fallback_fraction']:.0%} fall back to the CPU")
            for fallback in acc["fallback"][:10]:
                console.print(f"    {fallback['op']} [{fallback['type']}]: {fallback['reason']}", markup=False)
            if len(acc["fallback"]) > 10:
                console.print(f"    ... and {len(acc['fallback']) - 10} more")


class _Reporter:
    """Progress on stderr. On a terminal: a live ``[2/3] target: stage`` line with the total elapsed time;
    elsewhere (CI logs): one plain ``12:01:02 target: stage`` line per stage change. The first stage
    (``source: loading``) is held back until the next one, so an input error stays the only line."""

    def __init__(self, targets: list[str], live: Any = None) -> None:
        self.order = {t.casefold(): i for i, t in enumerate(targets, 1)}
        self.total = len(targets)
        self.live = live
        self.task: Any = None
        self.last: tuple[str, str] | None = None
        self.held: str | None = None
        self.holding = True
        self.started = time.monotonic()

    def label(self, target: str, stage: str) -> str:
        index = self.order.get(target.casefold())
        prefix = f"[{index}/{self.total}] " if index is not None and self.total else ""
        return f"{prefix}{target}: {stage}"

    def __call__(self, target: str, stage: str) -> None:
        if (target, stage) == self.last:
            return
        self.last = (target, stage)
        text = self.label(target, stage)
        if self.live is not None:
            if self.task is None:
                self.task = self.live.add_task(text, total=None)
            self.live.update(self.task, description=text)
            return
        line = f"{time.strftime('%H:%M:%S')} {text}"
        if target == "source" and self.holding and self.total:
            self.held = line
            return
        self.holding = False
        self.flush()
        print(line, file=sys.stderr, flush=True)

    def flush(self) -> None:
        self.holding = False
        if self.held is not None:
            print(self.held, file=sys.stderr, flush=True)
            self.held = None

    def say(self, line: str) -> None:
        """A line that stays (above the live line on a terminal)."""
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False, overflow="fold")
        else:
            print(line, file=sys.stderr, flush=True)


@contextmanager
def _progress(enabled: bool, targets: list[str] | None = None) -> Iterator[Callable[[str, str], None]]:
    if not enabled:
        yield lambda target, stage: None
        return
    if not sys.stderr.isatty():
        yield _Reporter(list(targets or []))
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                  console=make_console(stderr=True), transient=True) as live:
        yield _Reporter(list(targets or []), live)


def _attempt_lines(entry_id: str, entry: dict[str, Any], cached: bool) -> list[str]:
    """One target's outcome as lines that stay on screen: status, precision, seconds, and why each
    recipe that did not ship was skipped or rejected."""
    import re

    attempts = entry.get("attempts") or []
    seconds = sum(a.get("seconds") or 0 for a in attempts)
    artifact = entry.get("artifact") or {}
    if entry["status"] == "ok":
        head = f"{entry_id}: ok, {artifact.get('precision', '-')}" + (f" (recipe {entry['recipe']})" if entry.get("recipe") else "")
    else:
        head = f"{entry_id}: {entry['status']}"
    head += ", cached" if cached else f", {seconds:.1f} s"
    lines = [head]
    for attempt in attempts:
        if attempt.get("status") == "passed":
            continue
        reason = re.sub(r"^recipe '[^']*' ", "", " ".join(str(attempt.get("reason") or "").split()))
        lines.append(f"  {attempt.get('recipe')} {attempt.get('status')}: {reason}")
    divergence = entry.get("divergence") or {}
    if divergence.get("summary"):
        lines.append(f"  {divergence.get('recipe')} {divergence['summary']} "
                     f"(reports/{entry_id}/divergence.json)")
    return lines


@app.command()
def export(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="torchvision:NAME, timm:NAME, file.py:factory, model.onnx, model.pt2, hf:DIR or demo:digits")],
    target: Annotated[list[str], typer.Option("--target", "-t", metavar=TARGETS_METAVAR, help="Target id (repeatable, or comma-separated; any case).")],
    calib: Annotated[Optional[Path], typer.Option(help="Calibration data: .npz/.npy, or an image folder DIR/<class>/<image>.")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval", metavar="DATA", help="Labelled evaluation data (.npz with 'labels', or an image folder DIR/<class>/<image>), or FILE.py:function / package.module:function scoring a predictor.")] = None,
    metric: Annotated[str, typer.Option(help="Gate metric: auto (top-1 with labels, else fidelity), top1, top5 (any topK), cosine (vs fp32 outputs), map50 (--postprocess nms: mAP@0.5 vs the fp32 boxes, its default).")] = "auto",
    max_drop: Annotated[float, typer.Option(help="Largest allowed metric drop (absolute; 0.01 = 1 point).")] = 0.01,
    max_slowdown: Annotated[float, typer.Option(help="How much slower than the same runtime's fp32 artifact a compressed one may be (0.05 = 5 %, for timing noise).")] = 0.05,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Directory that receives NAME.edgepack/.")] = Path("dist"),
    name: Annotated[Optional[str], typer.Option(help="Bundle name (default: the model's).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help=".safetensors or state-dict .pt for torchvision/timm/factory sources.")] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="torchvision/timm: export the untrained architecture instead of the pretrained weights.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never download (pretrained weights must be in the local cache); same as EDGEPACK_OFFLINE=1.")] = False,
    inputs: Annotated[Optional[list[str]], typer.Option("--input", metavar="SPEC", help="NAME:1x3x224x224:float32 (repeatable).")] = None,
    sign_key: Annotated[Optional[Path], typer.Option(metavar="KEY", help="Ed25519 private key (from 'edgepack keygen'): writes manifest.sig.")] = None,
    recipe: Annotated[Optional[list[str]], typer.Option("--recipe", metavar="RECIPE", help="Recipe name or .toml file (repeatable, in order): replaces every target's recipe chain.")] = None,
    profile: Annotated[Optional[list[Path]], typer.Option("--profile", metavar="TOML", help="Extra target profile TOML (repeatable): your own device, may 'extends' a shipped one.")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", metavar="FILE", help="Class names for the artifacts' metadata: one per line, or JSON (list or id2label); replaces the source's own.")] = None,
    bake_preprocess: Annotated[bool, typer.Option("--bake-preprocess", help="Artifacts take uint8 NHWC images and do the cast, scale, mean/std and layout themselves (needs the source's preprocessing).")] = False,
    postprocess: Annotated[Optional[str], typer.Option("--postprocess", metavar="nms", help="nms: append the runtime's own NMS to a YOLO-style head ([1, 4+C, N] or [1, N, 4+C], cx cy w h + class scores); outputs boxes (xyxy), scores, classes, count, padded to --max-det.")] = None,
    iou: Annotated[Optional[float], typer.Option("--iou", help="--postprocess nms: IoU above which a box suppresses a lower-scoring one of its class (default 0.45).")] = None,
    conf: Annotated[Optional[float], typer.Option("--conf", help="--postprocess nms: class score a box must exceed (default 0.25).")] = None,
    max_det: Annotated[Optional[int], typer.Option("--max-det", help="--postprocess nms: most detections per image, the outputs' fixed size (default 100).")] = None,
    archive: Annotated[bool, typer.Option(help="Write NAME.edgepack.zip instead of the NAME.edgepack/ folder.")] = False,
    bench: Annotated[Optional[str], typer.Option(help="Benchmark what was exported on this runner (host, ssh://...) and put the summary in the manifest.", metavar="RUNNER")] = None,
    fail_on_fallback: Annotated[Optional[float], typer.Option(help="Fail a target when more than PCT % of its ops fall back to the CPU (placement report; for CI).", metavar="PCT")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Export every target even when the export cache has it.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result (bundle, ok, published, cached, manifest) as JSON.")] = False,
) -> None:
    """Export SOURCE to every --target and write one verified bundle."""
    from edgepack import api
    from edgepack.targets.registry import load_registry

    targets = split_targets(target)
    with user_errors("export" if as_json else None):
        go_offline(offline)
        registry = load_registry(extra=profile or ())
        with _progress(not as_json or not sys.stderr.isatty(), canonical_ids(registry, targets)) as progress:
            result = api.export(source, targets, calib=calib, eval_data=eval_data, metric=metric, max_drop=max_drop, max_slowdown=max_slowdown, out=out,
                                name=name, weights=weights, random_weights=random_weights, inputs=inputs or (), recipe_chain=recipe or (), sign_key=sign_key,
                                bake_preprocess=bake_preprocess, labels=labels, postprocess=postprocess, iou=iou, conf=conf, max_det=max_det, cache=not no_cache, archive=archive, fail_on_fallback=fail_on_fallback, bench=bench, registry=registry,
                                progress=progress)
            if isinstance(progress, _Reporter):
                progress.flush()
                for entry_id, entry in result.manifest["targets"].items():
                    for line in _attempt_lines(entry_id, entry, entry_id in result.cached):
                        progress.say(line)
                progress.say(f"done in {time.monotonic() - progress.started:.1f} s")
    if as_json:
        errors = [error_record("TargetFailed", f"{tid}: {entry.get('error') or entry['status']}", 1, target=tid)
                  for tid, entry in result.manifest["targets"].items() if entry["status"] != "ok"]
        print_envelope("export", {"bundle": str(result.bundle), "ok": result.ok, "published": result.published,
                                   "cached": result.cached, "timings": result.timings, "manifest": result.manifest},
                        ok=result.ok, errors=errors)
    else:
        _print_export_summary(result)
    raise typer.Exit(0 if result.ok else 1)


def _human_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):  # binary units, named as such
        if size < 1024 or unit == "GiB":
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


def _gate_text(gate: dict[str, Any] | None) -> str:
    """``0.9944 (artifact) vs 0.9972 (fp32), drop 0.3 pt [95% CI 0.1-0.8], n=2000 · note`` (the interval,
    sample count and note only when the manifest has them)."""
    if not gate:
        return "-"
    text = f"{gate['value']:.4f} (artifact) vs {gate['baseline']:.4f} (fp32)"
    if gate.get("kind") not in (None, "accuracy"):
        text += f" ({gate['kind']})"
    drop = gate.get("drop")
    if isinstance(drop, (int, float)):
        text += f", drop {drop * 100:.1f} pt"
    ci = gate.get("drop_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        low, high = ci[0] * 100, ci[1] * 100
        text += f" [95% CI {low:.1f}{' to ' if min(low, high) < 0 else '-'}{high:.1f}]"
    if gate.get("samples"):
        text += f", n={gate['samples']}"
    if gate.get("note"):
        text += f" · {' '.join(str(gate['note']).split())}"
    return text


def _print_export_summary(result: Any) -> None:
    """One table when it fits the terminal, else each target's details stacked under its id; failure
    reasons are printed in full."""
    from rich.markup import escape

    from edgepack.models.synthetic import ORIGIN as SYNTHETIC_CALIBRATION

    title = f"bundle {result.bundle}" if result.published else f"not published (previous bundle kept: {result.bundle})"
    weights = (result.manifest.get("source") or {}).get("weights") or ""
    if weights.startswith("random"):
        title += " · RANDOM WEIGHTS (untrained architecture)"
    calibration = (result.manifest.get("data") or {}).get("calibration") or ""
    quantized = any("int" in str((entry["artifact"] or {}).get("precision", "")) for entry in result.manifest["targets"].values())
    if calibration.startswith(SYNTHETIC_CALIBRATION) and quantized:
        title += f" · calibrated on {calibration} inputs: pass --calib DATA to use yours"
    benched = any("bench" in entry for entry in result.manifest["targets"].values())
    columns = ["target", "precision", "size", "parity", "accuracy", "placement", *(["p50 ms"] if benched else []), "status"]
    rows = []
    for entry_id, entry in result.manifest["targets"].items():
        artifact = entry["artifact"] or {}
        parity = entry["parity"]
        parity_text = (f"mean cos {parity['mean_cosine']:.5f}, max rel {parity['max_rel_error']:.1e}"
                       if parity else "-")
        if entry["status"] == "ok":
            status = "[green]ok[/green]" + (f" ({escape(entry['recipe'])})" if entry["recipe"] else "")
            if entry_id in result.cached:
                status += " · cached"
            if entry["runnable_here"] != "yes":
                status += " · not run here"
        else:
            status = f"[red]{entry['status']}[/red]: {escape(' '.join(str(entry['error']).split()))}"
        bench = entry.get("bench") or {}
        latency = [f"{bench['p50']:.3f}" if bench.get("measured") else "n/a"] if benched else []
        rows.append([escape(entry_id), artifact.get("precision", "-"), _human_bytes(artifact["bytes"]) if artifact else "-",
                     parity_text, escape(_gate_text(entry["gate"])), escape(_placement_text(entry.get("placement"))),
                     *latency, status])
    _print_rows(make_console(), escape(title), columns, rows)


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Path to NAME.edgepack/ or NAME.edgepack.zip.")],
    pub: Annotated[Optional[Path], typer.Option(metavar="KEY", help="Ed25519 public key: also check manifest.sig (an unsigned bundle fails).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Re-hash every file of BUNDLE against its manifest and cross-check each artifact record; exit 1 naming
    the first mismatch (tampered), 2 when BUNDLE is not a bundle."""
    from edgepack import api

    with user_errors("verify" if as_json else None):
        result = api.verify(bundle, public_key=pub)
    if as_json:
        print_envelope("verify", result.to_dict())
        return
    signed = ", signature ok" if result.signed else ""
    print(f"{result.bundle}: ok ({result.files_checked} files{signed}, targets: {', '.join(result.targets) or '-'})")


@app.command()
def keygen(path: Annotated[Path, typer.Argument(metavar="PATH", help="Where to write the private key (PATH.pub gets the public key).")]) -> None:
    """Create an Ed25519 key pair for signing bundles."""
    from edgepack.bundle.signing import generate_keypair

    with user_errors():
        private, public = generate_keypair(path)
    print(f"private key: {private} (keep it secret)\npublic key:  {public}")


def _batch(result: Any) -> int:
    return int((result.config or {}).get("batch", 1))


def _throughput(result: Any) -> float | None:
    """Samples per second: batch x 1000 / p50 ms."""
    return round(_batch(result) * 1000.0 / result.p50, 2) if result.p50 else None


def _bench_summary(result: Any, raw: bool) -> dict[str, Any]:
    data = result.to_dict()
    if not raw:
        data.pop("latencies_ms", None)
    data["throughput_ips"] = _throughput(result)
    data["throughput_basis"] = f"batch x 1000 / p50 ms, batch {_batch(result)}"
    return data


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Path to NAME.edgepack/ or NAME.edgepack.zip.")],
    target: Annotated[Optional[list[str]], typer.Option("--target", "-t", metavar=TARGETS_METAVAR, help="Target id (repeatable, or comma-separated; default: every target with an artifact).")] = None,
    runner: Annotated[str, typer.Option(metavar="URI", help="host, ssh://user@host[:port]?known_hosts=FILE&identity=KEY, adb://SERIAL or ios://UDID")] = "host",
    accelerator: Annotated[Optional[str], typer.Option(metavar="ID", help="Accelerator id of the target profile (adb: cpu, gpu, nnapi, htp; ios: all, ane, gpu, cpu).")] = None,
    iterations: Annotated[int, typer.Option(help="Minimum timed iterations.")] = 100,
    seconds: Annotated[float, typer.Option(help="Minimum timed seconds.")] = 2.0,
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads (default: the runtime's).")] = None,
    batch: Annotated[int, typer.Option(metavar="N", help="Samples per inference (artifacts with a dynamic batch; throughput counts samples).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output: a summary per target.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="With --json: also every timed latency (latencies_ms).")] = False,
    db: Annotated[Optional[str], typer.Option("--db", metavar="URL", help="Also store the results in this farm database (sqlite:///PATH or postgresql://...).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", metavar="NAME", help="Device name stored with --db (default: the runner URI).")] = None,
    pub: Annotated[Optional[Path], typer.Option(metavar="KEY", help="Ed25519 public key: refuse the bundle unless manifest.sig verifies.")] = None,
) -> None:
    """Measure latency percentiles (with 95 % CIs), throughput, cold start, memory and energy of a bundle's
    artifacts."""
    from edgepack.device_bench.bench import bench_bundle
    from edgepack.device_bench.config import BenchConfig

    targets = split_targets(target)
    with user_errors("bench" if as_json else None):
        from edgepack.targets.registry import load_registry

        registry = load_registry()
        if targets:
            targets = canonical_ids(registry, targets)
        with _progress(not as_json or not sys.stderr.isatty(), targets) as progress:
            config = BenchConfig(min_iters=iterations, min_seconds=seconds, threads=threads, accelerator=accelerator,
                                 batch=batch)
            results = []
            for one in targets or [None]:
                results.extend(bench_bundle(bundle, one, runner, config, progress=progress, public_key=pub,
                                            registry=registry))
            if db is not None:
                from edgepack.farm.store import record_bench_results

                record_bench_results(db, bundle, results, device=device)
    if as_json:
        print_envelope("bench", [_bench_summary(r, raw) for r in results])
        return
    from rich.markup import escape

    rows = []
    for r in results:
        energy = f"{r.energy_mj_per_inference:.3f} mJ" if r.energy_mj_per_inference is not None else "n/a*"
        cold = f"{r.cold_start_ms:.1f} ms" if r.cold_start_ms is not None else "n/a"
        memory = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "n/a"
        p50 = f"{r.p50:.3f}" + (f" ({r.ci95_p50[0]:.3f}-{r.ci95_p50[1]:.3f})" if r.ci95_p50 is not None else "")
        p90 = f"{r.p90:.3f}" if r.p90 is not None else "n/a"
        p99 = f"{r.p99:.3f} ({r.ci95_p99[0]:.3f}-{r.ci95_p99[1]:.3f})" if r.p99 is not None and r.ci95_p99 else "n/a"
        ips = _throughput(r)
        rows.append([escape(r.target), r.precision, p50, p90, p99, f"{ips:.1f}" if ips else "n/a", cold, memory, energy])
    console = make_console()
    _print_rows(console, escape(f"{bundle} on {runner}"),
                ["target", "precision", "p50 ms (95% CI)", "p90", "p99 (95% CI)", f"samples/s (batch {batch})",
                 "cold start", "peak MB", "energy"], rows)
    console.print(f"samples/s = {batch} x 1000 / p50 ms (p50 of one call with a batch of {batch})")
    for reason in sorted({r.energy_reason for r in results if r.energy_reason}):
        console.print(f"* energy not measurable here: {reason}", markup=False)
    for reason in sorted({r.percentiles_reason for r in results if r.percentiles_reason}):
        console.print(f"* n/a: {reason}", markup=False)
    for r in results:
        if r.clock != "wall" and r.wall_p50_ms is not None:
            console.print(f"* {r.target}: latencies on the runtime's clock ({r.clock}); "
                          f"the whole Python call took p50 {r.wall_p50_ms:.3f} ms", markup=False)


def _register_subsystems() -> None:
    """Commands owned by other subsystems live beside their code; each module adds its own (lazily importing)."""
    from edgepack.farm import cli as farm_cli
    from edgepack.package import cli as package_cli
    from edgepack.search import cli as search_cli
    from edgepack.toolchains import cli as toolchains_cli

    for module in (package_cli, farm_cli, search_cli, toolchains_cli):
        module.register(app)


_register_subsystems()


def main() -> None:
    """Console-script entry point."""
    _quiet_toolchains()
    app()


if __name__ == "__main__":
    main()
