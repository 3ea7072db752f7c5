"""``edgepack toolchains list|doctor``: what this machine has, read from package metadata, PATH and /proc/cpuinfo."""

from __future__ import annotations

import json
import os
import stat
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepack.cli import app
from edgepack.exporters import registry
from edgepack.targets.registry import load_registry
from edgepack.errors import UnsupportedError
from edgepack.toolchains.report import doctor, parse_cpuinfo, runtime_statuses


pytestmark = pytest.mark.usefixtures("isolated_toolchains")  # runtimes in their own venv report installed


def _json(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_list_names_every_runtime_with_its_installed_versions() -> None:
    code, envelope = _json("toolchains", "list")
    assert code == 0 and envelope["ok"] and envelope["command"] == "toolchains list"
    rows = {row["runtime"]: row for row in envelope["result"]}
    assert set(rows) == set(registry.exporter_classes())
    for runtime, cls in registry.exporter_classes().items():
        assert rows[runtime]["versions"] == {d: metadata.version(d) for d in cls.distributions}
        assert rows[runtime]["ready"] and not rows[runtime]["missing"]
    assert rows["tflite"]["isolation"] == "worker process" and rows["onnxruntime"]["isolation"] == "in-process"
    assert "host-ort" in rows["onnxruntime"]["targets"] and "android-pixel8" in rows["tflite"]["targets"]
    assert set(rows["tensorrt"]["tools"]) == {"trtexec"} and set(rows["edgetpu"]["tools"]) == {"edgetpu_compiler"}


def test_a_missing_package_is_a_problem_naming_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    cls = registry.exporter_classes()["ncnn"]
    monkeypatch.setattr(cls, "distributions", (*cls.distributions, "edgepack-no-such-package"))
    report = doctor(load_registry())
    assert report.problems == ["ncnn: missing edgepack-no-such-package (install: pip install edgepack-no-such-package); "
                               "targets raspberry-pi5-ncnn cannot export"]
    code, envelope = _json("toolchains", "doctor")
    assert code == 1 and not envelope["ok"] and envelope["result"]["problems"] == report.problems
    plain = CliRunner().invoke(app, ["toolchains", "doctor"])
    assert plain.exit_code == 1 and "problem: ncnn: missing edgepack-no-such-package" in " ".join(plain.stdout.split())


def test_doctor_finds_every_package_here_and_reports_the_host() -> None:
    code, envelope = _json("toolchains", "doctor")
    problems = envelope["result"]["problems"]
    assert not [p for p in problems if "missing" in p]  # a low disk here is the only other problem it may report
    assert code == (1 if problems else 0) and envelope["ok"] == (not problems)
    host = envelope["result"]["host"]
    assert host["cores"] == os.cpu_count() and host["python"].count(".") == 2 and host["free_disk_gb"] > 0
    model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    assert host["cpu"] == model
    assert ("AVX2" in host["isa"]) == ("avx2" in flags)


def test_cpuinfo_flags_become_isa_names() -> None:
    x86 = "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile\n"
    assert parse_cpuinfo(x86) == ("Some Xeon", {"fpu", "sse", "avx2", "avx512f", "avx512_vnni", "amx_tile"})
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0b\n"
    assert parse_cpuinfo(arm)[1] == {"fp", "asimd", "asimddp", "i8mm"}


def test_a_vendor_tool_on_path_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "trtexec"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    status = next(s for s in runtime_statuses(load_registry()) if s.runtime == "tensorrt")
    assert status.tools == {"trtexec": str(tool)}
    assert not any(note.startswith("tensorrt: trtexec") for note in doctor(load_registry()).notes)


# --------------------------------------------------------------------------------------------------
# toolchains in their own venv
# --------------------------------------------------------------------------------------------------


def test_an_isolated_toolchain_installs_from_the_registry_and_borrows_from_edgepack(tmp_path, monkeypatch):
    import subprocess

    from edgepack.exporters.base import IsolatedEnv
    from edgepack.toolchains.isolated import TOOLCHAINS_ENV, env_dir, install, installed_versions, python_for

    monkeypatch.setenv(TOOLCHAINS_ENV, str(tmp_path / "toolchains"))
    env = IsolatedEnv("tiny", requirements=("six==1.16.0",), borrowed=("numpy",), check="import six, numpy")
    with pytest.raises(UnsupportedError, match="the tiny toolchain is not installed") as info:
        python_for(env)
    assert info.value.hint == "edgepack toolchains install tiny"
    versions = install(env)
    assert versions["six"] == "1.16.0" and installed_versions(env) == versions
    python = python_for(env)
    assert python.is_relative_to(env_dir(env))
    done = subprocess.run([str(python), "-c", "import six, numpy, sys; print(six.__file__); print(numpy.__version__)"],
                          capture_output=True, text=True, check=True)
    six_file, numpy_version = done.stdout.split()
    assert Path(six_file).is_relative_to(env_dir(env)) and numpy_version == metadata.version("numpy")
    assert sorted(p.name for p in env_dir(env).parent.iterdir()) == [".tiny.lock", "tiny"]  # no staging folder left
    assert install(env, reinstall=False) == versions  # a second, concurrent-safe install finds the first's venv


def test_a_failed_install_leaves_nothing_that_looks_installed(tmp_path, monkeypatch):
    from edgepack.errors import EnvironmentFailure
    from edgepack.exporters.base import IsolatedEnv
    from edgepack.toolchains.isolated import TOOLCHAINS_ENV, env_dir, install, installed_versions

    monkeypatch.setenv(TOOLCHAINS_ENV, str(tmp_path / "toolchains"))
    env = IsolatedEnv("broken", requirements=("six==1.16.0",), check="import module_that_does_not_exist")
    with pytest.raises(EnvironmentFailure, match="the broken check failed: ModuleNotFoundError"):
        install(env)
    assert installed_versions(env) is None and not env_dir(env).exists()
    assert [p.name for p in env_dir(env).parent.iterdir()] == [".broken.lock"]


def test_install_refuses_a_toolchain_that_is_not_isolated() -> None:
    result = CliRunner().invoke(app, ["toolchains", "install", "onnxruntime"])
    assert result.exit_code == 2 and "no toolchain named 'onnxruntime' runs in its own environment" in result.stderr
