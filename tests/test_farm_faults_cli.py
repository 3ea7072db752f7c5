"""Faults of the device farm as a user meets them on the command line (real subprocesses, real exit codes):
a bad ``--db`` (text file, read-only store, missing directory, missing file for a read command) is one line
and exit 2 for ``edgepack bench`` and ``edgepack farm run|regress|report``; a plain file path is a SQLite
database; an orphaned farm worker exits quietly; SIGTERM marks the run interrupted (exit 143) and
``--resume`` continues it; the example farm runs on a fresh machine, and a device that fails is red in
the report and makes ``farm regress`` exit 1 naming it and why.

Farm runs go through ``tests/farm_faults.py`` as a script: the ``edgepack`` CLI with the fault runner
registered and the module's one export reused."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_lines import message_lines

from edgepack.device_bench.bench import bench_bundle
from edgepack.device_bench.config import BenchConfig
from edgepack.farm.config import ModelSpec
from edgepack.farm.nightly import FarmExports
from edgepack.farm.store import Store, record_bench_results

TESTS = Path(__file__).parent
EXAMPLE = TESTS.parent / "examples" / "farm.toml"
EDGEPACK = [sys.executable, "-m", "edgepack.cli"]
FARM_CLI = [sys.executable, str(TESTS / "farm_faults.py")]
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real export (demo:digits for host-ort, fp32) that every farm run of this module reuses."""
    root = tmp_path_factory.mktemp("exports")
    FarmExports(root, reuse=True).get(ModelSpec(name="digits", source="demo:digits"), "host-ort", "fp32")
    return root


@pytest.fixture(scope="module")
def bundle(exports: Path) -> Path:
    return FarmExports(exports, reuse=True).get(ModelSpec(name="digits", source="demo:digits"), "host-ort", "fp32").bundle


@pytest.fixture()
def env(exports: Path, tmp_path: Path) -> dict[str, str]:
    """A fresh machine: an empty home (no ~/.ssh), no farm variables set, the module's export reused."""
    home = tmp_path / "home"
    home.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEPACK_FARM_", "EDGEPACK_DB"))}
    return {**clean, "HOME": str(home), "EDGEPACK_TEST_FARM_EXPORTS": str(exports)}


def farm_file(path: Path, runner: str, *, models: int = 1, timeout_s: float = 120) -> Path:
    models_toml = "".join(f'[[models]]\nname = "digits-{i}"\nsource = "demo:digits"\n\n' for i in range(models))
    path.write_text(
        f'[farm]\nname = "faults"\ntimeout_s = {timeout_s}\nretries = 0\nbackoff_s = 0.01\n\n'
        '[bench]\nwarmup = 3\nmin_iters = 20\nmin_seconds = 0.2\n\n'
        f'[[devices]]\nid = "dev"\nprofile = "host-ort"\nrunner = "{runner}"\n\n'
        f'{models_toml}[[targets]]\nid = "host-ort"\nrecipes = ["fp32"]\n'
    )
    return path


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def one_error_line(done: subprocess.CompletedProcess, code: int) -> str:
    """The single stderr line of a failed command (asserting exit code, one line, no traceback)."""
    lines = message_lines(done.stderr)
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert len(lines) == 1, done.stderr[-4000:]
    return lines[0]


# --------------------------------------------------------------------------------------------------
# 1. --db faults: one line, exit 2
# --------------------------------------------------------------------------------------------------


def _migrated(path: Path) -> Path:
    Store.open(f"sqlite:///{path}").close()
    return path


def _bad_db(kind: str, tmp_path: Path) -> tuple[str, Path]:
    """(--db value, the path the message must name) for one kind of bad database."""
    if kind == "text-file":
        path = tmp_path / "notes.sqlite"
        path.write_text("these are my notes, not a database\n")
        return f"sqlite:///{path}", path
    if kind == "missing-directory":
        path = tmp_path / "no" / "such" / "dir" / "farm.sqlite"
        return f"sqlite:///{path}", path.parent
    if kind == "missing-file":
        path = tmp_path / "typo.sqlite"
        return f"sqlite:///{path}", path
    if kind == "missing-file-path":
        path = tmp_path / "typo.sqlite"
        return str(path), path
    if kind == "read-only":
        path = _migrated(tmp_path / "readonly.sqlite")
        if ROOT:  # root writes through file modes: open the database read-only the way SQLite does
            return f"sqlite:///file:{path}?mode=ro&uri=true", path
        path.chmod(0o444)
        return f"sqlite:///{path}", path
    raise AssertionError(kind)


def _command(name: str, db: str, tmp_path: Path, bundle: Path) -> list[str]:
    if name == "bench":
        return [*EDGEPACK, "bench", str(bundle), "--iterations", "5", "--seconds", "0.05", "--db", db]
    if name == "farm run":
        return [*EDGEPACK, "farm", "run", str(farm_file(tmp_path / "farm.toml", "host")), "--db", db]
    if name == "farm regress":
        return [*EDGEPACK, "farm", "regress", "--db", db]
    if name == "farm report":
        return [*EDGEPACK, "farm", "report", "--db", db, "--out", str(tmp_path / "report.html")]
    raise AssertionError(name)


CASES = [(command, kind) for command in ("bench", "farm run") for kind in ("text-file", "read-only", "missing-directory")]
CASES += [(command, kind) for command in ("farm regress", "farm report")
          for kind in ("text-file", "missing-directory", "missing-file", "missing-file-path")]


@pytest.mark.parametrize(("command", "kind"), CASES)
def test_bad_db_is_one_line_and_exit_2(command: str, kind: str, tmp_path: Path, bundle: Path) -> None:
    db, named = _bad_db(kind, tmp_path)
    argv = _command(command, db, tmp_path, bundle)
    before = {p.name for p in tmp_path.iterdir()}
    line = one_error_line(run(argv), 2)
    assert line.startswith("edgepack: error: --db ") and str(named) in line, line
    if kind.startswith("missing-file"):
        assert "no database file" in line and not named.exists()  # a typo creates nothing
    if kind == "missing-directory":
        assert "does not exist" in line and not (tmp_path / "no").exists()
    if kind == "text-file":
        assert "not a SQLite database" in line
    if kind == "read-only":
        assert "read-only" in line or "readonly" in line
    assert {p.name for p in tmp_path.iterdir()} == before  # nothing created, no report written


def test_read_only_database_can_still_be_read(tmp_path: Path, bundle: Path) -> None:
    path = tmp_path / "farm.sqlite"
    results = bench_bundle(bundle, "host-ort", "host", BenchConfig(warmup=2, min_iters=10, min_seconds=0.05))
    record_bench_results(f"sqlite:///{path}", bundle, results, device="laptop")
    path.chmod(0o444)
    db = f"sqlite:///file:{path}?mode=ro&uri=true" if ROOT else str(path)
    done = run([*EDGEPACK, "farm", "regress", "--db", db])
    assert done.returncode == 0 and "insufficient-history" in done.stdout, done.stdout + done.stderr


# --------------------------------------------------------------------------------------------------
# 2. an orphaned worker exits quietly
# --------------------------------------------------------------------------------------------------


def test_orphaned_worker_exits_quietly(tmp_path: Path, env: dict[str, str]) -> None:
    state = tmp_path / "state"
    farm = farm_file(tmp_path / "farm.toml", f"fault://dev?state={state}&on=1&mode=orphan")
    started = time.monotonic()
    done = run([*FARM_CLI, "farm", "run", str(farm), "--db", f"sqlite:///{tmp_path / 'farm.sqlite'}"], env=env)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr  # the worker killed the farm process
    assert (state / "pid-1").is_file()
    # stderr closes only when the orphaned worker exits too: it did, quietly, and soon
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) <= 1, done.stderr
    assert time.monotonic() - started < 200


# --------------------------------------------------------------------------------------------------
# 3. SIGTERM marks the run interrupted; --resume continues it
# --------------------------------------------------------------------------------------------------


def test_sigterm_marks_the_run_interrupted_and_resume_continues(tmp_path: Path, env: dict[str, str]) -> None:
    state = tmp_path / "state"
    farm = farm_file(tmp_path / "farm.toml", f"fault://dev?state={state}&on=1&mode=hang", models=2)
    db = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    process = subprocess.Popen([*FARM_CLI, "farm", "run", str(farm), "--db", db], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (state / "pid-1").is_file():  # the first job's bench hangs on the device
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert one_error_line(done, 143) == "edgepack: terminated"
    assert "interrupted" in stdout
    hung = int((state / "pid-1").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(hung, 0)  # the worker was stopped with the farm
    with Store.open(db) as store:
        [interrupted] = store.runs("faults")
        assert (interrupted.status, interrupted.finished_at) == ("interrupted", None)
        assert [(j.spec.model, j.status, j.attempts) for j in store.jobs(interrupted.id)] == [
            ("digits-0", "pending", 1), ("digits-1", "pending", 0)]

    resumed = run([*FARM_CLI, "farm", "run", str(farm), "--db", db, "--resume"], env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming run {interrupted.id}" in resumed.stdout
    with Store.open(db) as store:
        [run_row] = store.runs("faults")
        assert (run_row.id, run_row.status, run_row.resumes) == (interrupted.id, "finished", 1)
        assert [(j.status, j.attempts) for j in store.jobs(run_row.id)] == [("ok", 2), ("ok", 1)]


# --------------------------------------------------------------------------------------------------
# 4. the example farm on a fresh machine; a failing device is visible
# --------------------------------------------------------------------------------------------------


def test_example_farm_runs_on_a_fresh_machine_and_a_failing_device_is_visible(tmp_path: Path,
                                                                              env: dict[str, str]) -> None:
    fresh = run([*FARM_CLI, "farm", "run", str(EXAMPLE), "--db", "sqlite:///farm.sqlite"], env=env, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr  # the SSH device is opt-in
    assert "1 ok, 0 failed, 0 skipped" in fresh.stdout and "loopback-ssh" not in fresh.stdout
    assert (tmp_path / "farm.sqlite").is_file()
    regress = run([*EDGEPACK, "farm", "regress", "--db", "sqlite:///farm.sqlite"], env=env, cwd=tmp_path)
    assert regress.returncode == 0 and "insufficient-history" in regress.stdout, regress.stdout + regress.stderr

    # Opting in to the SSH device on a machine without its key: the device fails tonight.
    failing = run([*FARM_CLI, "farm", "run", str(EXAMPLE), "--db", "sqlite:///farm.sqlite"],
                  env={**env, "EDGEPACK_FARM_SSH": "true"}, cwd=tmp_path)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "identity file" in failing.stdout
    regress = run([*EDGEPACK, "farm", "regress", "--db", "sqlite:///farm.sqlite", "--junit", "junit.xml"], env=env, cwd=tmp_path)
    assert regress.returncode == 1, regress.stdout + regress.stderr
    assert "device loopback-ssh produced no result tonight: job failed:" in regress.stdout
    assert "identity file" in regress.stdout and "1 missing result(s)" in regress.stdout
    assert 'type="missing"' in (tmp_path / "junit.xml").read_text()

    report = run([*EDGEPACK, "farm", "report", "--db", "sqlite:///farm.sqlite", "--out", "report.html"], env=env, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "report.html").read_text()
    section = html[html.index('<h2 id="device-loopback-ssh">'):]
    section = section[:section.index("<h2", 5)]
    assert 'class="device-failed"' in section and "identity file" in section
    assert "online" not in section and "device-ok" not in section
    alert = html[html.index('id="failing-devices"'):]
    assert "loopback-ssh" in alert[:alert.index("</div>")] and "this-host" not in alert[:alert.index("</div>")]
    host = html[html.index('<h2 id="device-this-host">'):]
    assert 'class="device-ok"' in host[:host.index("<h2", 5)]


def test_plain_sqlite_files_are_databases(tmp_path: Path, env: dict[str, str]) -> None:
    farm = farm_file(tmp_path / "farm.toml", "host")
    done = run([*FARM_CLI, "farm", "run", str(farm), "--db", "farm.sqlite"], env=env, cwd=tmp_path)
    assert done.returncode == 0 and "1 ok" in done.stdout, done.stdout + done.stderr
    done = run([*EDGEPACK, "farm", "regress", "--db", "farm.sqlite"], cwd=tmp_path)
    assert done.returncode == 0 and "insufficient-history" in done.stdout, done.stdout + done.stderr
    with Store.open(f"sqlite:///{tmp_path / 'farm.sqlite'}", create=False) as store:
        assert [r.farm for r in store.runs()] == ["faults"]
    done = run([*EDGEPACK, "farm", "regress", "--db", "nothing-here.sqlite"], cwd=tmp_path)
    line = one_error_line(done, 2)
    assert f"no database file {tmp_path / 'nothing-here.sqlite'}" in line and not (tmp_path / "nothing-here.sqlite").exists()
    sqlite3.connect(tmp_path / "empty.sqlite").close()  # an empty SQLite file opens (and gets the farm schema)
    done = run([*EDGEPACK, "farm", "regress", "--db", "empty.sqlite"], cwd=tmp_path)
    assert one_error_line(done, 2).startswith("edgepack: error: no runs in sqlite:///")
