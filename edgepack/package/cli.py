"""CLI commands of the packaging subsystem (``edgepack package``, ``edgepack diff``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

PLATFORM_NAMES = ("android", "ios", "python")


def package(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="A bundle directory (NAME.edgepack) or its .zip.")],
    platform: Annotated[str, typer.Option("--platform", "-p", metavar="PLATFORM", help="android | ios | python.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder to write (replaced if it is an earlier package).")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", metavar="ID", help="Which target's artifact to package "
                                                  "(default: the first that fits the platform).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    pub: Annotated[Optional[Path], typer.Option(metavar="KEY", help="Ed25519 public key: refuse the bundle unless manifest.sig verifies.")] = None,
) -> None:
    """Turn BUNDLE into a drop-in app deliverable (Android, iOS or Python) with a generated runner.

    android: assets + Kotlin runner + Gradle lines; ios: Swift package with the .mlpackage;
    python: a runner module for ONNX Runtime / OpenVINO / LiteRT.
    """
    from edgepack.cli_support import one_target, print_envelope, user_errors
    from edgepack.package.build import package_bundle

    with user_errors("package" if as_json else None):
        target = one_target(target, "package")
        if target is not None:
            from edgepack.cli_support import canonical_ids
            from edgepack.targets.registry import load_registry

            (target,) = canonical_ids(load_registry(), [target])
        result = package_bundle(bundle, platform, out, target=target, public_key=pub)
    if as_json:
        print_envelope("package", result.to_dict())
        return
    print(f"{result.platform} package for {', '.join(result.targets)} -> {result.out} "
          f"({len(result.files)} files, bundle {result.bundle_sha256[:12]})")


def diff(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The earlier bundle (directory, .zip, or its manifest.json).")],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The later bundle.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    allow_breaking: Annotated[bool, typer.Option("--allow-breaking", help="Exit 0 even when the I/O signature changed.")] = False,
    pub: Annotated[Optional[Path], typer.Option(metavar="KEY", help="Ed25519 public key: both bundles must carry a manifest.sig that verifies.")] = None,
) -> None:
    """Show what changed from OLD to NEW per target; exit 1 on a breaking I/O change.

    Size, accuracy, parity, latency, placement, recipe and toolchain versions are reported; I/O signature
    changes (names, shapes, dtypes, quantization, preprocessing, labels) are breaking unless --allow-breaking.
    """
    from edgepack.bundle.diff import diff_bundles
    from edgepack.cli_support import print_envelope, user_errors

    with user_errors("diff" if as_json else None):
        result = diff_bundles(old, new, public_key=pub)
    if as_json:
        failed = bool(result.breaking) and not allow_breaking
        print_envelope("diff", result.to_dict(), ok=not failed, errors=[
            {"type": "BreakingChange", "message": f"{len(result.breaking)} breaking change(s)", "hint": "--allow-breaking",
             "exit_code": 1}] if failed else [])
    else:
        _print_diff(result)
    if result.breaking and not allow_breaking:
        raise typer.Exit(1)


def _print_diff(result: Any) -> None:
    if not result.changes:
        print(f"no differences between {result.old} and {result.new}")
        return
    print(f"{result.old} -> {result.new}: {len(result.changes)} change(s), {len(result.breaking)} breaking")
    current: object = object()
    for change in result.changes:
        if change.target != current:
            current = change.target
            print(f"\n{change.target or '(bundle)'}")
        flag = "BREAKING " if change.breaking else ""
        print(f"  {flag}{change.aspect:<10} {change.describe()}")


def register(app: Any) -> None:
    """Add this subsystem's commands to the top-level Typer ``app``."""
    app.command("package")(package)
    app.command("diff")(diff)
