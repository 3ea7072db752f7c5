"""The device farm end to end with real exports (demo:digits -> host-ort), real benchmarks, real
databases, and injected faults (tests/farm_faults.py): timeouts, retries with backoff, devices going
offline, a killed worker, a killed farm process resumed, a dropped PostgreSQL connection; the Ray
executor on a local two-node Ray cluster against the local executor; the example farm.toml for real."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import farm_faults
import pg_server
from pg_server import postgres  # noqa: F401  (fixture)
from edgepack.device_bench.bench import bench_bundle
from edgepack.device_bench.config import BenchConfig
from edgepack.device_bench.runners.base import RUNNERS
from edgepack.errors import InputError
from edgepack.farm.config import ModelSpec, load_farm, parse_farm
from edgepack.farm.nightly import FarmExports, plan_jobs, run_farm
from edgepack.farm.store import Store, record_bench_results
from edgepack.hashing import file_sha256
from test_bench_ssh import SshServer, sshd  # noqa: F401  (the real loopback sshd fixture)

TESTS = Path(__file__).parent
EXAMPLE = TESTS.parent / "examples" / "farm.toml"
BENCH = {"warmup": 3, "min_iters": 20, "min_seconds": 0.2}
HOST = {"runner": "host"}


@pytest.fixture(autouse=True)
def fault_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RUNNERS, farm_faults.SCHEME, farm_faults.TARGET)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> FarmExports:
    """One real export shared by every farm run here (the farm caches exports by model/target/recipe)."""
    cache = FarmExports(tmp_path_factory.mktemp("exports"), reuse=True)
    cache.get(ModelSpec(name="digits", source="demo:digits"), "host-ort", "fp32")
    return cache


def fault(state: Path, on: str, mode: str) -> dict[str, str]:
    return {"runner": f"fault://{state.name}?state={state}&on={on}&mode={mode}"}


def farm(devices: dict[str, dict[str, str]], *, models: int = 1, **settings: float) -> dict:
    return {
        "farm": {"name": "test", "timeout_s": 60, "retries": 2, "backoff_s": 0.01, "offline_after": 3, **settings},
        "bench": BENCH,
        "devices": [{"id": name, "profile": "host-ort", **spec} for name, spec in devices.items()],
        "models": [{"name": f"digits-{i}", "source": "demo:digits"} for i in range(models)],
        "targets": [{"id": "host-ort", "recipes": ["fp32"]}],
    }


def states(store: Store, run_id: int) -> dict[tuple[str, str], tuple[str, int]]:
    return {(j.spec.device, j.spec.model): (j.status, j.attempts) for j in store.jobs(run_id)}


@pytest.fixture()
def store(tmp_path: Path):
    with Store.open(f"sqlite:///{tmp_path / 'farm.sqlite'}") as opened:
        yield opened


def test_local_farm_stores_traceable_results(store: Store, exports: FarmExports) -> None:
    config = parse_farm(farm({"host-a": HOST, "host-b": HOST}, models=2))
    assert [(j.device, j.model) for j in plan_jobs(config)] == [
        ("host-a", "digits-0"), ("host-a", "digits-1"), ("host-b", "digits-0"), ("host-b", "digits-1")]
    before = exports.exports
    run = run_farm(config, store, exports=exports)
    assert run.ok and len(run.jobs) == 4 and exports.exports == before  # one export for all four jobs
    bundle = exports.get(ModelSpec(name="digits", source="demo:digits"), "host-ort", "fp32").bundle
    results = store.results(run_id=run.run_id)
    assert sorted(r.key for r in results) == sorted(j.key for j in plan_jobs(config))
    for row in results:
        assert row.runner == "host" and row.precision == "fp32"
        assert len(row.latencies_ms) >= BENCH["min_iters"] and row.p50 > 0
        assert row.bundle_sha256 == file_sha256(bundle / "manifest.json")
        assert row.artifact_sha256 == file_sha256(bundle / "artifacts" / "host-ort" / "model.onnx")
        assert row.toolchain["onnxruntime"] and row.accuracy is not None and row.accuracy > 0.9
    measured = store.bench_result(results[0].id)
    assert measured.latencies_ms == results[0].latencies_ms and measured.env["versions"]["onnxruntime"]
    assert store.runs("test")[-1].status == "finished"


def test_retry_with_exponential_backoff(store: Store, exports: FarmExports, tmp_path: Path) -> None:
    config = parse_farm(farm({"flaky": fault(tmp_path / "flaky", "1,2", "error")}, retries=3, backoff_s=0.5))
    slept: list[float] = []
    run = run_farm(config, store, exports=exports, sleep=slept.append)
    assert states(store, run.run_id) == {("flaky", "digits-0"): ("ok", 3)}
    assert slept == [0.5, 1.0]
    [row] = store.results(run_id=run.run_id)
    assert row.runner == "fault://flaky"


def test_hung_runner_is_killed_at_the_timeout(store: Store, exports: FarmExports, tmp_path: Path) -> None:
    state = tmp_path / "hung"
    config = parse_farm(farm({"hung": fault(state, "1", "hang")}, timeout_s=8))
    started = time.monotonic()
    run = run_farm(config, store, exports=exports)
    assert time.monotonic() - started < 60
    [job] = run.jobs
    assert (job.status, job.attempts) == ("ok", 2)
    hung_pid = int((state / "pid-1").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(hung_pid, 0)  # the hung worker was killed, not left behind


def test_killed_worker_is_replaced(store: Store, exports: FarmExports, tmp_path: Path) -> None:
    state = tmp_path / "killed"
    run = run_farm(parse_farm(farm({"killed": fault(state, "1", "kill")})), store, exports=exports)
    [job] = run.jobs
    assert (job.status, job.attempts) == ("ok", 2)
    assert (state / "pid-1").read_text() != (state / "pid-2").read_text()


def test_device_goes_offline_and_its_jobs_are_skipped(store: Store, exports: FarmExports, tmp_path: Path) -> None:
    config = parse_farm(farm({"broken": fault(tmp_path / "broken", ",".join(map(str, range(1, 50))), "error"),
                              "fine": HOST}, models=4, retries=1, offline_after=2))
    run = run_farm(config, store, exports=exports)
    assert states(store, run.run_id) == {
        ("broken", "digits-0"): ("failed", 2), ("broken", "digits-1"): ("failed", 2),
        ("broken", "digits-2"): ("skipped", 0), ("broken", "digits-3"): ("skipped", 0),
        **{("fine", f"digits-{i}"): ("ok", 1) for i in range(4)},
    }
    jobs = {(j.spec.device, j.spec.model): j for j in run.jobs}
    assert "injected failure on call 4" in jobs["broken", "digits-1"].error
    assert jobs["broken", "digits-3"].error.startswith("device offline: 2 consecutive jobs failed")
    device = store.devices()["broken"]
    assert device["status"] == "offline" and "consecutive" in device["reason"]
    assert (run.count("ok"), run.count("failed"), run.count("skipped")) == (4, 2, 2)  # nothing lost


def test_killed_farm_process_resumes_without_repeating_jobs(store: Store, exports: FarmExports, tmp_path: Path) -> None:
    data = farm({"dev": fault(tmp_path / "dev", "2", "kill-farm")}, models=3)
    script = (
        "import torch, json, sys\nfrom pathlib import Path\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from edgepack.device_bench.runners.base import RUNNERS\n"
        f"RUNNERS[{farm_faults.SCHEME!r}] = {farm_faults.TARGET!r}\n"
        "from edgepack.farm.nightly import FarmExports, run_farm\n"
        "from edgepack.farm.config import parse_farm\n"
        "from edgepack.farm.store import Store\n"
        f"config = parse_farm(json.loads({json.dumps(data)!r}))\n"
        f"run_farm(config, Store.open({store.engine.url.render_as_string(False)!r}),"
        f" exports=FarmExports(Path({str(exports.root)!r}), reuse=True))\n"
    )
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    [run] = store.runs("test")
    assert run.status == "running"
    assert states(store, run.id) == {("dev", "digits-0"): ("ok", 1), ("dev", "digits-1"): ("running", 1),
                                     ("dev", "digits-2"): ("pending", 0)}
    [first] = store.results(run_id=run.id)

    resumed = run_farm(parse_farm(data), store, exports=exports, resume=True)
    assert resumed.resumed and resumed.run_id == run.id
    assert states(store, run.id) == {("dev", "digits-0"): ("ok", 1), ("dev", "digits-1"): ("ok", 2),
                                     ("dev", "digits-2"): ("ok", 1)}
    results = store.results(run_id=run.id)
    assert len(results) == 3 and results[0] == first  # the finished job was not repeated
    assert store.runs("test")[-1].status == "finished" and store.runs("test")[-1].resumes == 1
    assert run_farm(parse_farm(data), store, exports=exports, resume=True).run_id != run.id  # nothing left: new run


def test_dropped_database_connections_lose_nothing(postgres: pg_server.PgServer, exports: FarmExports) -> None:
    url = postgres.create_database("farm_drops")
    stop = threading.Event()
    dropped: list[str] = []

    def drop_connections() -> None:
        while not stop.wait(0.3):
            dropped.append(postgres.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                                         "where datname = 'farm_drops' and pid <> pg_backend_pid()"))

    with Store.open(url) as store:
        killer = threading.Thread(target=drop_connections)
        killer.start()
        try:
            run = run_farm(parse_farm(farm({"host-a": HOST, "host-b": HOST}, models=3)), store, exports=exports)
        finally:
            stop.set()
            killer.join()
        assert any("True" in d for d in dropped)  # connections really were dropped during the run
        assert run.ok and len(run.jobs) == 6
        results = store.results(run_id=run.run_id)
        assert sorted(r.key for r in results) == sorted(j.spec.key for j in run.jobs)


@pytest.mark.slow
def test_ray_cluster_gives_the_local_results(tmp_path: Path, exports: FarmExports) -> None:
    import ray  # noqa: F401  (a dev dependency)
    from ray.cluster_utils import Cluster

    from edgepack.farm.executors import RayExecutor

    devices = {"host-a": HOST, "host-b": fault(tmp_path / "ray" / "b", "1", "kill"),
               "host-c": fault(tmp_path / "ray" / "c", "1", "hang")}
    try:  # two "farm hosts" = two Ray nodes on this machine, each advertising one device
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"device:host-a": 1},
                                                                "include_dashboard": False})
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        pytest.skip(f"a local Ray cluster cannot start here: {type(exc).__name__}: {exc}")
    try:
        cluster.add_node(num_cpus=1, resources={"device:host-b": 1, "device:host-c": 1})
        cluster.wait_for_nodes()
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}}
        with Store.open(f"sqlite:///{tmp_path / 'ray.sqlite'}") as store:
            ray_config = parse_farm(farm({**devices, "ghost": HOST}, models=2, timeout_s=20))
            ray_run = run_farm(ray_config, store, executor=RayExecutor(cluster.address, runtime_env=env), exports=exports)
            ray_rows = store.results(run_id=ray_run.run_id)
    finally:
        cluster.shutdown()
    with Store.open(f"sqlite:///{tmp_path / 'local.sqlite'}") as store:
        local_devices = {"host-a": HOST, "host-b": fault(tmp_path / "local" / "b", "1", "kill")}
        local_run = run_farm(parse_farm(farm(local_devices, models=2)), store, exports=exports)
        local_rows = store.results(run_id=local_run.run_id)

    def summary(run, rows):
        jobs = {(j.spec.device, j.spec.model): (j.status, j.attempts) for j in run.jobs if j.spec.device in local_devices}
        measured = {r.key: (r.runner, r.precision, r.bundle_sha256, r.artifact_sha256, dict(r.toolchain), r.accuracy,
                            len(r.latencies_ms) >= BENCH["min_iters"]) for r in rows if r.device in local_devices}
        return jobs, measured

    assert summary(ray_run, ray_rows) == summary(local_run, local_rows)
    ray_jobs = {(j.spec.device, j.spec.model): j for j in ray_run.jobs}
    assert (ray_jobs["host-b", "digits-0"].status, ray_jobs["host-b", "digits-0"].attempts) == ("ok", 2)  # killed worker
    assert (ray_jobs["host-c", "digits-0"].status, ray_jobs["host-c", "digits-0"].attempts) == ("ok", 2)  # hung task
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "ray" / "c" / "pid-1").read_text()), 0)  # the hung Ray worker was killed
    ghost = [j for j in ray_run.jobs if j.spec.device == "ghost"]
    assert [j.status for j in ghost] == ["skipped", "skipped"]
    assert "no Ray node advertises resource 'device:ghost'" in ghost[0].error


def test_bench_results_can_be_recorded(tmp_path: Path, exports: FarmExports) -> None:
    bundle = exports.get(ModelSpec(name="digits", source="demo:digits"), "host-ort", "fp32").bundle
    results = bench_bundle(bundle, "host-ort", "host", BenchConfig(warmup=3, min_iters=20, min_seconds=0.1))
    url = f"sqlite:///{tmp_path / 'bench.sqlite'}"
    run_id = record_bench_results(url, bundle, results, device="my-laptop")
    with Store.open(url) as store:
        [row] = store.results(run_id=run_id)
        assert row.key == ("my-laptop", "digits", "host-ort", "fp32")  # the bundle's name
        assert row.latencies_ms == results[0].latencies_ms
        assert row.bundle_sha256 == file_sha256(bundle / "manifest.json")
        assert store.runs()[0].farm == "bench"


def test_bad_farm_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = farm({"a": HOST})
    data["devices"][0]["colour"] = "red"
    with pytest.raises(InputError, match=r"devices.0.colour: unknown key"):
        parse_farm(data, "farm.toml")
    data = farm({"a": HOST})
    data["devices"][0]["profile"] = "x86-openvino"
    with pytest.raises(InputError, match="profile 'x86-openvino' has no \\[\\[targets\\]\\] entry"):
        parse_farm(data, "farm.toml")
    data = farm({"a": HOST})
    data["targets"][0]["recipes"] = ["no-such-recipe"]
    with pytest.raises(InputError, match="no-such-recipe"):
        parse_farm(data, "farm.toml")
    data = farm({"a": {"runner": "ssh://${EDGEPACK_TEST_UNSET_VAR}@127.0.0.1"}})
    monkeypatch.delenv("EDGEPACK_TEST_UNSET_VAR", raising=False)
    with pytest.raises(InputError, match="EDGEPACK_TEST_UNSET_VAR is not set"):
        parse_farm(data, "farm.toml")
    done = subprocess.run([sys.executable, "-m", "edgepack.cli", "farm", "run", str(tmp_path / "none.toml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "farm file not found" in done.stderr


def test_example_farm_file_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEPACK_FARM_SSH", raising=False)
    monkeypatch.setenv("EDGEPACK_FARM_SSH_PORT", "2222")
    monkeypatch.setenv("EDGEPACK_FARM_SSH_KEY", "keys/farm")
    config = load_farm(EXAMPLE)
    ssh = config.device("loopback-ssh")
    assert ssh.runner.endswith("@127.0.0.1:2222")
    assert ssh.options["identity"] == str(EXAMPLE.parent / "keys" / "farm")
    assert not ssh.enabled and [j.device for j in plan_jobs(config)] == ["this-host"]  # SSH is opt-in
    monkeypatch.setenv("EDGEPACK_FARM_SSH", "true")
    assert [j.device for j in plan_jobs(load_farm(EXAMPLE))] == ["this-host", "loopback-ssh"]


def test_disabled_devices_get_no_jobs(store: Store, exports: FarmExports) -> None:
    data = farm({"on": HOST, "off": {"runner": "ssh://nobody@127.0.0.1:1?identity=/no/such/key"}})
    data["devices"][1]["enabled"] = False
    run = run_farm(parse_farm(data), store, exports=exports)
    assert run.ok and [j.spec.device for j in run.jobs] == ["on"] and "off" not in store.devices()
    data["devices"][0]["enabled"] = "false"
    with pytest.raises(InputError, match="every device has enabled = false"):
        parse_farm(data, "farm.toml")


def test_failing_device_is_marked_until_it_succeeds(store: Store, exports: FarmExports, tmp_path: Path) -> None:
    config = parse_farm(farm({"flaky": fault(tmp_path / "flaky", "2", "error")}, models=3, retries=0))
    seen: list[dict] = []
    run = run_farm(config, store, exports=exports,  # the third job's line comes before its success is recorded
                   progress=lambda line: seen.append(store.devices()["flaky"]) if "digits-2" in line else None)
    assert states(store, run.run_id) == {("flaky", "digits-0"): ("ok", 1), ("flaky", "digits-1"): ("failed", 1),
                                         ("flaky", "digits-2"): ("ok", 1)}
    assert seen[0]["status"] == "failing" and "digits-1/host-ort/fp32: failed" in seen[0]["reason"]
    assert "injected failure on call 2" in seen[0]["reason"]
    assert store.devices()["flaky"] == {**seen[0], "status": "online", "reason": None}  # its next job succeeded


@pytest.mark.slow
def test_example_farm_runs_for_real(sshd: SshServer, tmp_path: Path) -> None:
    env = {**os.environ, "EDGEPACK_FARM_SSH": "true",  # the SSH device is opt-in
           "EDGEPACK_FARM_SSH_USER": getpass.getuser(), "EDGEPACK_FARM_SSH_PORT": str(sshd.port),
           "EDGEPACK_FARM_SSH_KEY": str(sshd.identity), "EDGEPACK_FARM_SSH_KNOWN_HOSTS": str(sshd.known_hosts),
           "EDGEPACK_FARM_SSH_PYTHON": sys.executable}
    db = f"sqlite:///{tmp_path / 'example.sqlite'}"
    edgepack = [sys.executable, "-m", "edgepack.cli", "farm"]
    run = subprocess.run([*edgepack, "run", str(EXAMPLE), "--db", db, "--json"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)["result"]
    assert (summary["ok"], summary["failed"], summary["skipped"], summary["exports"]) == (2, 0, 0, 1)
    regress = subprocess.run([*edgepack, "regress", "--db", db, "--junit", str(tmp_path / "j.xml")],
                             capture_output=True, text=True, env=env, timeout=120)
    assert regress.returncode == 0 and "insufficient-history" in regress.stdout
    report = subprocess.run([*edgepack, "report", "--db", db, "--out", str(tmp_path / "r.html")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert report.returncode == 0, report.stderr
    with Store.open(db) as store:
        runners = {r.device: r.runner for r in store.results()}
    assert runners == {"this-host": "host", "loopback-ssh": f"ssh://{getpass.getuser()}@127.0.0.1:{sshd.port}"}
    assert "loopback-ssh" in (tmp_path / "r.html").read_text()
