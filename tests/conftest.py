"""Shared fixtures. torch is imported first in every test process: TensorFlow (pulled in by some
toolchains) followed by torch._dynamo segfaults on these machines."""

from __future__ import annotations

import torch  # noqa: F401  (import order matters, see module docstring)
import torch._dynamo  # noqa: F401

import os
from pathlib import Path

import numpy as np
import pytest

from edgepack.compress.recipe import load_recipes
from edgepack.targets.registry import load_registry

os.environ["EDGEPACK_OFFLINE"] = "1"  # tests never download: pretrained weights come from the local cache or not at all


@pytest.fixture(scope="session", autouse=True)
def _export_cache_off():
    """Every test exports for real (a cache hit would hide the code under test); the cache tests opt in."""
    previous = os.environ.get("EDGEPACK_CACHE")
    os.environ["EDGEPACK_CACHE"] = "off"
    yield
    if previous is None:
        os.environ.pop("EDGEPACK_CACHE", None)
    else:
        os.environ["EDGEPACK_CACHE"] = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small torch models run faster on one intra-op thread than on two contended ones (2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="session")
def recipes():
    return load_recipes()


@pytest.fixture()
def tiny_cnn_file(tmp_path: Path) -> Path:
    """A python factory file defining a small CNN (3x16x16 input) and its input spec."""
    path = tmp_path / "tiny.py"
    path.write_text(
        "import torch\n"
        "from edgepack.models.source import TensorSpec\n"
        "EDGEPACK_INPUTS = [TensorSpec('pixels', ('batch', 3, 16, 16), 'float32', 'NCHW')]\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(\n"
        "        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),\n"
        "        torch.nn.AvgPool2d(16), torch.nn.Flatten(), torch.nn.Linear(8, 5))\n"
    )
    return path


@pytest.fixture()
def calib_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "calib.npz"
    np.savez(path, pixels=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    return path


@pytest.fixture()
def mount_tmpfs(tmp_path: Path):
    """``mount_tmpfs(name, size)`` -> a real tmpfs of ``size`` (e.g. ``"64k"``) under ``tmp_path``, unmounted
    afterwards; the test is skipped with the reason where mounting is not allowed."""
    import subprocess

    mounts: list[Path] = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): disk-full test not run")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture(scope="session")
def isolated_toolchains() -> dict[str, dict[str, str]]:
    """Every toolchain a runtime declares to run in its own venv, installed from the package registry (as
    ``edgepack toolchains install NAME`` does) unless already there; ``{name: installed versions}``."""
    from edgepack.exporters.registry import isolated_envs
    from edgepack.toolchains.isolated import install, installed_versions

    return {name: installed_versions(env) or install(env, reinstall=False) for name, env in isolated_envs().items()}
