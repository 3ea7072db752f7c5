"""The README's target table, generated from the registry so it cannot drift."""

from __future__ import annotations

from edgepack.targets.registry import Registry


def markdown_table(registry: Registry, exporter_runtimes: set[str]) -> str:
    """One row per profile: id, device, runtime/format, accelerators with precisions, recipes, status."""
    lines = [
        "| target | device | runtime → format | accelerators (precisions) | recipe chain | export here |",
        "|---|---|---|---|---|---|",
    ]
    for profile in registry:
        accelerators = "; ".join(f"{name} ({', '.join(acc.precisions)})" for name, acc in profile.accelerators.items())
        status = "yes" if profile.runtime in exporter_runtimes else "not yet"
        lines.append(
            f"| `{profile.id}` | {profile.name} | {profile.runtime} → {profile.format} | {accelerators} | "
            f"{' → '.join(profile.recipes)} | {status} |"
        )
    return "\n".join(lines) + "\n"
