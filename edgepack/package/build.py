"""``edgepack package``: verify a bundle, build one platform's deliverable, write it atomically."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgepack.version import __version__
from edgepack._fs import make_temp_dir, swap_into_place
from edgepack.bundle.writer import MANIFEST_NAME
from edgepack.errors import InputError
from edgepack.hashing import file_sha256

MARKER = "edgepack-package.json"
"""Written into every package: bundle hash, platform, targets and file hashes. Its presence is what lets
a later ``edgepack package`` replace the folder."""


@dataclass(frozen=True)
class PackageResult:
    out: Path
    platform: str
    targets: list[str]
    bundle_sha256: str
    files: dict[str, str]
    """``{relative path: sha256}`` of every file written (the marker excluded)."""

    def to_dict(self) -> dict[str, object]:
        return {"out": str(self.out), "platform": self.platform, "targets": self.targets,
                "bundle_sha256": self.bundle_sha256, "files": self.files}


def platforms() -> list[str]:
    from edgepack.package.platforms import PLATFORMS

    return sorted(PLATFORMS)


def package_bundle(bundle: str | Path, platform: str, out: str | Path, *, target: str | None = None,
                   public_key: str | Path | None = None) -> PackageResult:
    """Build the ``platform`` deliverable of ``bundle`` (a directory or ``.zip``) into ``out`` (replaced only
    if it is an earlier package).

    The bundle is verified first (every file and artifact record against the manifest, and the signature
    when ``public_key`` is given), so a package never carries an artifact the manifest does not vouch for.
    """
    from edgepack.bundle.verify import open_bundle
    from edgepack.package.platforms import PLATFORMS, Bundle

    spec = PLATFORMS.get(platform)
    if spec is None:
        raise InputError(f"--platform {platform}: unknown platform", hint=f"choose one of {', '.join(sorted(PLATFORMS))}")
    root = Path(bundle)
    destination = Path(out)
    _check_destination(destination, root)
    with open_bundle(root, public_key) as opened:
        view = Bundle(opened.root, opened.manifest, file_sha256(opened.root / MANIFEST_NAME))
        deliverable = spec.build(view, target)
        files = _write(destination, deliverable.text, deliverable.copies, {
            "bundle": view.manifest.get("name"), "bundle_sha256": view.sha256, "platform": platform,
            "targets": deliverable.targets, "edgepack": __version__,
        })
    return PackageResult(destination, platform, deliverable.targets, view.sha256, files)


def _check_destination(destination: Path, bundle: Path) -> None:
    if destination.resolve() == bundle.resolve() or destination.resolve().is_relative_to(bundle.resolve()):
        raise InputError(f"--out {destination}: must not be inside the bundle {bundle}")
    if destination.exists() and not _replaceable(destination):
        raise InputError(f"--out {destination}: exists and is not an edgepack package; refusing to replace it",
                         hint="choose a new or empty folder")


def _replaceable(path: Path) -> bool:
    return path.is_dir() and ((path / MARKER).is_file() or not any(path.iterdir()))


def _write(destination: Path, text: dict[str, str], copies: dict[str, Path], meta: dict[str, object]) -> dict[str, str]:
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(f".{destination.name}.", parent, ".tmp")
    try:
        for relative, content in text.items():
            target = _inside(staging, relative)
            target.write_text(content, encoding="utf-8", newline="\n")
        for relative, source in copies.items():
            shutil.copyfile(source, _inside(staging, relative))
        files = {p.relative_to(staging).as_posix(): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        marker = dict(meta, files=files)
        (staging / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        swap_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def _inside(root: Path, relative: str) -> Path:
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InputError(f"package path '{relative}' escapes the package folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


