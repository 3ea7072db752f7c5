"""Toolchains in their own venv (:class:`~edgepack.exporters.base.IsolatedEnv`): where they live, whether one is
installed, and installing one from the package registry.

A venv is built in a temporary folder beside its final place and renamed into place once its check passed, so
an interrupted install leaves nothing that looks installed. Its ``edgepack-toolchain.json`` records the versions
installed; its ``zz_edgepack_borrowed.pth`` appends edgepack's own site-packages after the venv's (for the
:attr:`~edgepack.exporters.base.IsolatedEnv.borrowed` distributions).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from edgepack.errors import EnvironmentFailure, UnsupportedError
from edgepack.exporters.base import IsolatedEnv

TOOLCHAINS_ENV = "EDGEPACK_TOOLCHAINS"
"""Folder of the isolated toolchains (default: ``$XDG_DATA_HOME/edgepack/toolchains``)."""
MARKER = "edgepack-toolchain.json"
INSTALL_TIMEOUT_S = 1800


def toolchains_dir() -> Path:
    if os.environ.get(TOOLCHAINS_ENV):
        return Path(os.environ[TOOLCHAINS_ENV])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "edgepack" / "toolchains"


def env_dir(env: IsolatedEnv) -> Path:
    return toolchains_dir() / env.name


def _python(root: Path) -> Path:
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def installed_versions(env: IsolatedEnv) -> dict[str, str] | None:
    """``{distribution: version}`` of an installed venv, or ``None`` when it is not installed."""
    try:
        return dict(json.loads((env_dir(env) / MARKER).read_text())["versions"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def python_for(env: IsolatedEnv) -> Path:
    """The venv's interpreter; one line naming the install command when it is not installed."""
    if installed_versions(env) is None or not _python(env_dir(env)).exists():
        raise UnsupportedError(f"the {env.name} toolchain is not installed (it runs in its own environment)",
                               hint=f"edgepack toolchains install {env.name}")
    return _python(env_dir(env))


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-1:]
        raise EnvironmentFailure(f"{what} failed: {tail[0] if tail else f'exit {done.returncode}'}")


@contextlib.contextmanager
def _install_lock(final: Path) -> Iterator[None]:
    """One install of a toolchain at a time (a second waits for the first: advisory ``flock``)."""
    fd = os.open(final.parent / f".{final.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def install(env: IsolatedEnv, progress: Callable[[str], None] = lambda _: None, *,
            reinstall: bool = True) -> dict[str, str]:
    """Create (or, with ``reinstall``, re-create) the venv of ``env`` from the package registry; returns the
    installed versions. Concurrent installs of one toolchain run one after the other; without ``reinstall`` the
    later ones find the first's venv and return its versions."""
    final = env_dir(env)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _install_lock(final):
        existing = installed_versions(env)
        if existing is not None and not reinstall:
            return existing
        return _install(env, final, progress)


def _install(env: IsolatedEnv, final: Path, progress: Callable[[str], None]) -> dict[str, str]:
    staging = Path(tempfile.mkdtemp(prefix=f".{env.name}-installing-", dir=final.parent))
    try:
        progress(f"creating a venv for {env.name}")
        _run([sys.executable, "-m", "venv", str(staging)], "creating the venv")
        python = _python(staging)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"]
        progress(f"installing {', '.join(env.requirements)}")
        _run([*pip, *env.requirements], f"pip install of {env.name}'s requirements")
        if env.without_dependencies:
            progress(f"installing {', '.join(env.without_dependencies)} (without dependencies)")
            _run([*pip, "--no-deps", *env.without_dependencies], f"pip install of {env.name}")
        if env.borrowed:
            site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            Path(site, "zz_edgepack_borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        if env.check:
            progress(f"checking {env.name}")
            _run([str(python), "-c", env.check], f"the {env.name} check")
        listing = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                                 capture_output=True, text=True, check=True).stdout
        versions = {p["name"].lower(): p["version"] for p in json.loads(listing)}
        (staging / MARKER).write_text(json.dumps({"name": env.name, "versions": versions}, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        return versions
    finally:
        shutil.rmtree(staging, ignore_errors=True)
