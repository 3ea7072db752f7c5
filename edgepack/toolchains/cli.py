"""CLI commands of the toolchain report (``edgepack toolchains list|doctor``). Imports stay inside the commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer


def register(app: Any) -> None:
    """Add this subsystem's commands to the top-level Typer ``app``."""
    from edgepack.cli_support import CONTEXT, make_console, print_envelope, user_errors

    toolchains_app = typer.Typer(help="What this machine can export and check: toolchains per runtime, host facts.",
                                 no_args_is_help=True, context_settings=CONTEXT)
    app.add_typer(toolchains_app, name="toolchains")

    @toolchains_app.command("list")
    def toolchains_list(
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Each runtime: its packages and installed versions, how its converter runs, the targets on it."""
        with user_errors("toolchains list" if as_json else None):
            from dataclasses import asdict

            from edgepack.targets.registry import load_registry
            from edgepack.toolchains.report import runtime_statuses

            statuses = runtime_statuses(load_registry())
            if as_json:
                print_envelope("toolchains list", [asdict(s) | {"ready": s.ready} for s in statuses])
                return
            console = make_console()
            for status in statuses:
                state = "[green]installed[/green]" if status.ready else "[red]missing " + ", ".join(status.missing) + "[/red]"
                console.print(f"[bold]{status.runtime}[/bold]  {state}  ({status.isolation}; targets: "
                              f"{', '.join(status.targets) or 'none shipped'})", highlight=False)
                console.print("  " + ", ".join(f"{d} {v}" for d, v in status.versions.items()), highlight=False)
                if status.isolated is not None:
                    console.print("  own venv: " + ", ".join(f"{d} {v}" for d, v in status.isolated.items()),
                                  highlight=False)
                for tool, path in status.tools.items():
                    console.print(f"  {tool}: {path or 'not on PATH'}", highlight=False)

    @toolchains_app.command("install")
    def toolchains_install(
        name: Annotated[str, typer.Argument(help="Toolchain that runs in its own environment (see `toolchains list`).")],
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Create a toolchain's own venv from the package registry (for pins that conflict with edgepack's)."""
        with user_errors("toolchains install" if as_json else None):
            from edgepack.errors import InputError
            from edgepack.exporters.registry import isolated_envs
            from edgepack.toolchains.isolated import env_dir, install

            envs = isolated_envs()
            if name not in envs:
                raise InputError(f"no toolchain named '{name}' runs in its own environment",
                                 hint=f"known: {', '.join(sorted(envs)) or 'none'}; the others install with edgepack")
            console = make_console(stderr=True)
            versions = install(envs[name], progress=lambda line: None if as_json else console.print(line, highlight=False))
            if as_json:
                print_envelope("toolchains install", {"name": name, "path": str(env_dir(envs[name])), "versions": versions})
            else:
                console.print(f"installed {name} in {env_dir(envs[name])}", highlight=False)

    @toolchains_app.command("doctor")
    def toolchains_doctor(
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Check this machine: CPU and ISA (which int8 kernels host runtimes use), disk, cache, every runtime's
        packages. Exit 1 when something stops an export."""
        with user_errors("toolchains doctor" if as_json else None):
            from edgepack.targets.registry import load_registry
            from edgepack.toolchains.report import doctor

            report = doctor(load_registry())
            if as_json:
                print_envelope("toolchains doctor", report.to_json(), ok=not report.problems)
            else:
                host = report.host
                console = make_console()
                console.print(f"host: {host.cpu} ({host.machine}, {host.cores} cores), {host.system}, "
                              f"Python {host.python}", highlight=False)
                console.print(f"ISA: {', '.join(host.isa) or 'none of the int8/bf16 extensions edgepack looks for'}",
                              highlight=False)
                console.print(f"disk free: {host.free_disk_gb} GB; cache: {host.cache_dir or 'off'}; "
                              f"offline: {'yes' if host.offline else 'no'}", highlight=False)
                installed = [r.runtime for r in report.runtimes if r.ready]
                console.print(f"runtimes installed: {', '.join(installed) or 'none'}", highlight=False)
                for note in report.notes:
                    console.print(f"note: {note}", highlight=False)
                for problem in report.problems:
                    console.print(f"[red]problem[/red]: {problem}", highlight=False)
                console.print("ok" if not report.problems else f"{len(report.problems)} problem(s)", highlight=False)
            if report.problems:
                raise typer.Exit(1)
