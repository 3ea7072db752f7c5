"""The farm results database on SQLite and on a real PostgreSQL server (tests/pg_server.py):
migrations, round trips, idempotent commits, crash recovery of job states, dropped connections."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

import pg_server
from pg_server import postgres  # noqa: F401  (fixture)
from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.stats import summarize
from edgepack.errors import InputError
from edgepack.farm.store import (
    Base,
    JobSpec,
    Provenance,
    Store,
    default_db_url,
    migrations_config,
    normalize_url,
)

JOBS = [JobSpec("dev-a", "digits", "demo:digits", "host-ort", "fp32", 0),
        JobSpec("dev-a", "digits", "demo:digits", "host-ort", "int8", 1),
        JobSpec("dev-b", "digits", "demo:digits", "host-ort", "fp32", 0)]
DEVICES = [("dev-a", "host-ort", "host"), ("dev-b", "host-ort", "ssh://me@127.0.0.1:2222")]
PROVENANCE = Provenance("demo:digits", "a" * 64, "b" * 64, "c" * 64, {"onnxruntime": "1.0"}, "accuracy:top1", 0.97, 0.98, 0.01)


def synthetic_result(latencies: np.ndarray, *, device: str = "host", runner: str = "host") -> BenchResult:
    """A BenchResult whose statistics are computed by edgepack's own stats from ``latencies``."""
    stats = summarize([float(v) for v in latencies])
    return BenchResult(
        runner=runner, device=device, target="host-ort", runtime="onnxruntime", precision="fp32",
        latencies_ms=tuple(round(float(v), 6) for v in latencies), p50=stats.p50, p90=stats.p90, p95=stats.p95,
        p99=stats.p99, mean=stats.mean, std=stats.std, min=stats.min, max=stats.max, ci95_p50=stats.ci95_p50,
        ci95_p99=stats.ci95_p99, outliers=stats.outliers, outlier_policy=stats.outlier_policy, warmup_mode="fixed",
        warmup_discarded=0, cold_start_ms=None, cold_start_reason="synthetic", peak_mem_mb=None,
        peak_mem_reason="synthetic", energy_mj_per_inference=None, energy_reason="synthetic", thermal=None,
        thermal_reason="synthetic", sustained=None, sustained_reason="synthetic", env={"hostname": device},
        config=BenchConfig(min_iters=10, min_seconds=0).to_dict(), notes=("synthetic",),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    else:
        server = request.getfixturevalue("postgres")
        url = server.create_database(f"t_{tmp_path.name.lower().replace('-', '_')[:40]}")
    with Store.open(url) as opened:
        yield opened


def test_migrations_create_the_model_schema(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert compare_metadata(context, Base.metadata) == []
        head = ScriptDirectory.from_config(migrations_config()).get_current_head()
        assert context.get_current_revision() == head
    Store.open(store.engine.url.render_as_string(hide_password=False)).close()  # upgrading again is a no-op


def test_run_jobs_and_results_round_trip(store: Store) -> None:
    run_id = store.start_run("nightly", {"farm": {"name": "nightly"}}, "local", DEVICES, JOBS)
    jobs = store.jobs(run_id)
    assert [(j.spec.device, j.spec.recipe, j.status) for j in jobs] == [
        ("dev-a", "fp32", "pending"), ("dev-a", "int8", "pending"), ("dev-b", "fp32", "pending")]
    latencies = np.random.default_rng(0).lognormal(0.0, 0.1, 300)
    measured = synthetic_result(latencies, device="dev-a")
    assert store.job_attempt(jobs[0].id) == 1
    result_id = store.record_result(jobs[0].id, measured, PROVENANCE)
    assert store.record_result(jobs[0].id, measured, PROVENANCE) == result_id  # a retried commit adds nothing
    store.job_attempt(jobs[1].id)
    store.job_error(jobs[1].id, "attempt 1: timeout")
    store.job_done(jobs[1].id, "failed", "attempt 1: timeout")
    store.job_done(jobs[2].id, "skipped", "device offline")
    store.finish_run(run_id)

    assert store.bench_result(result_id) == measured
    [row] = store.results(farm="nightly")
    assert row.key == ("dev-a", "digits", "host-ort", "fp32")
    assert row.latencies_ms == measured.latencies_ms and row.p50 == measured.p50 and row.p99_ci == measured.ci95_p99
    assert (row.bundle_sha256, row.artifact_sha256, row.accuracy, dict(row.toolchain)) == (
        "b" * 64, "c" * 64, 0.97, {"onnxruntime": "1.0"})
    states = {j.spec.recipe + j.spec.device: (j.status, j.attempts, j.error) for j in store.jobs(run_id)}
    assert states == {"fp32dev-a": ("ok", 1, None), "int8dev-a": ("failed", 1, "attempt 1: timeout"),
                      "fp32dev-b": ("skipped", 0, "device offline")}
    [run] = store.runs("nightly")
    assert run.status == "finished" and run.finished_at is not None and store.unfinished_run("nightly", run.config) is None
    assert store.devices()["dev-b"]["runner"] == "ssh://me@127.0.0.1:2222"


def test_crashed_run_is_found_and_its_running_jobs_reset(store: Store) -> None:
    config = {"farm": {"name": "nightly"}, "n": 1}
    run_id = store.start_run("nightly", config, "local", DEVICES, JOBS)
    first, second, _ = store.jobs(run_id)
    store.job_attempt(first.id)
    store.record_result(first.id, synthetic_result(np.linspace(1, 2, 50)), PROVENANCE)
    store.job_attempt(second.id)  # the farm process dies here
    assert store.unfinished_run("nightly", {**config, "n": 2}) is None  # a changed farm.toml is a new run
    assert store.unfinished_run("nightly", config) == run_id
    store.resume_run(run_id, DEVICES)
    states = [(j.status, j.attempts) for j in store.jobs(run_id)]
    assert states == [("ok", 1), ("pending", 1), ("pending", 0)]
    assert store.runs("nightly")[-1].resumes == 1


def test_concurrent_commits_from_device_threads(store: Store) -> None:
    specs = [JobSpec(f"dev-{d}", f"m{i}", "demo:digits", "host-ort", "fp32", i) for d in "ab" for i in range(6)]
    run_id = store.start_run("nightly", {"x": 1}, "local", DEVICES, specs)
    jobs = store.jobs(run_id)

    def worker(device: str) -> None:
        for job in (j for j in jobs if j.spec.device == device):
            store.job_attempt(job.id)
            store.record_result(job.id, synthetic_result(np.linspace(1, 2, 20) + job.id), PROVENANCE)

    threads = [threading.Thread(target=worker, args=(d,)) for d in ("dev-a", "dev-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.results(run_id=run_id)) == 12
    assert {j.status for j in store.jobs(run_id)} == {"ok"}


def test_dropped_postgres_connection_is_retried(postgres: pg_server.PgServer, tmp_path) -> None:
    url = postgres.create_database("dropped")
    calls = []
    with Store.open(url) as store:
        run_id = store.start_run("nightly", {}, "local", DEVICES, JOBS)

        def work(session) -> int:
            calls.append(1)
            pid = session.execute(text("select pg_backend_pid()")).scalar_one()
            if len(calls) == 1:  # the server drops this very connection in the middle of the transaction
                postgres.psql(f"select pg_terminate_backend({pid})")
            session.execute(text("update jobs set attempts = attempts + 1 where run_id = :r"), {"r": run_id})
            return pid

        store.transaction(work)
        assert len(calls) == 2
        assert [j.attempts for j in store.jobs(run_id)] == [1, 1, 1]  # the lost transaction left nothing behind


def test_urls(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    assert normalize_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
    assert normalize_url("sqlite:////x/y.db") == "sqlite:////x/y.db"
    with pytest.raises(InputError, match="unsupported database 'mysql'"):
        normalize_url("mysql://u@h/db")
    assert normalize_url("farm.db") == f"sqlite:///{Path.cwd() / 'farm.db'}"  # a plain path is a SQLite file
    assert normalize_url(str(tmp_path / "x.sqlite")) == f"sqlite:///{tmp_path / 'x.sqlite'}"
    with pytest.raises(InputError, match="not a database URL"):
        normalize_url("sqlite:/farm.db")
    monkeypatch.delenv("EDGEPACK_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_db_url() == f"sqlite:///{tmp_path / 'data' / 'edgepack' / 'farm.sqlite'}"
    with Store.open() as store:  # the default database is created with its directory
        assert store.runs() == []
    assert (tmp_path / "data" / "edgepack" / "farm.sqlite").is_file()
    monkeypatch.setenv("EDGEPACK_DB", f"sqlite:///{tmp_path / 'env.sqlite'}")
    assert default_db_url().endswith("env.sqlite")


def test_unreachable_postgres_is_a_user_error() -> None:
    with pytest.raises(InputError, match="cannot open the database"):
        Store.open(f"postgresql://nobody@127.0.0.1:{pg_server._free_port()}/none")



def test_interrupted_run_is_resumed(store: Store) -> None:
    config = {"farm": {"name": "nightly"}, "n": 3}
    run_id = store.start_run("nightly", config, "local", DEVICES, JOBS)
    first, second, _ = store.jobs(run_id)
    store.job_attempt(first.id)
    store.record_result(first.id, synthetic_result(np.linspace(1, 2, 50)), PROVENANCE)
    store.job_attempt(second.id)  # SIGTERM arrives here
    store.interrupt_run(run_id)
    [run] = store.runs("nightly")
    assert (run.status, run.finished_at) == ("interrupted", None)
    assert [(j.status, j.attempts) for j in store.jobs(run_id)] == [("ok", 1), ("pending", 1), ("pending", 0)]
    assert store.unfinished_run("nightly", config) == run_id
    store.resume_run(run_id, DEVICES)
    assert (store.runs("nightly")[-1].status, store.runs("nightly")[-1].resumes) == ("running", 1)
    store.finish_run(run_id)
    store.interrupt_run(run_id)  # a finished run stays finished
    assert store.runs("nightly")[-1].status == "finished" and store.unfinished_run("nightly", config) is None


def test_bad_sqlite_databases_are_one_line_errors(tmp_path) -> None:
    from edgepack.errors import OutputError

    missing = tmp_path / "typo.sqlite"
    with pytest.raises(InputError, match=re.escape(f"--db {missing}: no database file {missing}")):
        Store.open(str(missing), create=False)  # reading: a typo is an error, not an empty database
    assert not missing.exists()
    nested = tmp_path / "no" / "dir" / "farm.sqlite"
    with pytest.raises(InputError, match=re.escape(f"directory {nested.parent} does not exist")):
        Store.open(f"sqlite:///{nested}")
    assert not (tmp_path / "no").exists()
    text_file = tmp_path / "notes.sqlite"
    text_file.write_text("not a database\n")
    with pytest.raises(InputError, match=re.escape(f"{text_file} is not a SQLite database")):
        Store.open(f"sqlite:///{text_file}")
    with pytest.raises(InputError, match="is a directory"):
        Store.open(str(tmp_path))
    with Store.open(str(tmp_path / "plain.sqlite")) as store:  # a plain path is created on write
        store.start_run("nightly", {}, "local", DEVICES, JOBS)
    with Store.open(str(tmp_path / "plain.sqlite"), create=False) as store:
        assert len(store.runs()) == 1
    started = time.monotonic()
    with Store.open(f"sqlite:///file:{tmp_path / 'plain.sqlite'}?mode=ro&uri=true") as store:  # a read-only database
        assert len(store.runs()) == 1  # reads
        with pytest.raises(OutputError, match="cannot write .*plain.sqlite: attempt to write a readonly database"):
            store.start_run("nightly", {}, "local", DEVICES, JOBS)
    assert time.monotonic() - started < 5  # not retried like a dropped connection
