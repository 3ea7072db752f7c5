"""Regression detection on synthetic histories: no change and +3 % noise raise no alarm, a +10 % step
and an accuracy drop beyond the gate do; JSON, JUnit XML and the CLI exit code through a real store."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from edgepack.farm.regress import Thresholds, compare, detect
from edgepack.farm.store import JobSpec, Provenance, Store
from test_store import synthetic_result

NIGHTS = 8
SAMPLES = 600
SEEDS = range(10)
KEYS = [("pixel8-01", "digits", "android-pixel8", "int8"), ("rpi5-01", "digits", "linux-arm64-cpu", "fp32")]


def night_latencies(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """One night of latencies: lognormal around 2 ms (sigma 0.12) times a night-to-night drift (sd 0.5 %)."""
    drift = rng.normal(1.0, 0.005)
    return 2.0 * scale * drift * rng.lognormal(0.0, 0.12, SAMPLES)


def add_run(store: Store, farm: str, nights: dict[tuple[str, str, str, str], np.ndarray], accuracy: float = 0.97) -> int:
    """Store one synthetic farm run through the same calls the farm makes."""
    specs = [JobSpec(d, m, "demo:digits", t, r, i) for i, (d, m, t, r) in enumerate(sorted(nights))]
    devices = sorted({(d, t, "host") for d, _, t, _ in nights})
    run_id = store.start_run(farm, {"thresholds": {"window": 5}}, "local", devices, specs)
    for job in store.jobs(run_id):
        store.job_attempt(job.id)
        provenance = Provenance("demo:digits", None, "b" * 64, "c" * 64, {}, "accuracy:top1", accuracy, 0.98, 0.01)
        store.record_result(job.id, synthetic_result(nights[job.spec.key], device=job.spec.device), provenance)
    store.finish_run(run_id)
    return run_id


@functools.lru_cache(maxsize=None)
def _baseline(seed: int) -> tuple["_Row", ...]:
    rng = np.random.default_rng(seed)
    return tuple(_Row(night, night_latencies(rng), 0.97) for night in range(NIGHTS))


def history_rows(seed: int, tonight_scale: float, tonight_accuracy: float = 0.97):
    """``NIGHTS`` baseline rows and tonight's row (latencies times ``tonight_scale``) of one key."""
    tonight_rng = np.random.default_rng([seed, round(tonight_scale * 1000)])
    return list(_baseline(seed)), _Row(NIGHTS, night_latencies(tonight_rng, tonight_scale), tonight_accuracy)


class _Row:
    """The fields :func:`compare` reads, computed with edgepack's stats from synthetic latencies."""

    def __init__(self, run_id: int, latencies: np.ndarray, accuracy: float) -> None:
        result = synthetic_result(latencies)
        self.run_id, self.key = run_id, KEYS[0]
        self.p50, self.p99, self.p50_ci, self.p99_ci = result.p50, result.p99, result.ci95_p50, result.ci95_p99
        self.latencies_ms = result.latencies_ms
        self.accuracy, self.accuracy_max_drop, self.bundle_sha256 = accuracy, 0.01, "b" * 64


@pytest.mark.parametrize(("scale", "expect_alarm"), [(1.0, False), (1.03, False), (1.10, True)])
def test_synthetic_histories(scale: float, expect_alarm: bool) -> None:
    verdicts = []
    for seed in SEEDS:
        history, tonight = history_rows(seed, scale)
        verdicts.append(compare(tonight, history, Thresholds()).status)
    expected = "regression" if expect_alarm else "ok"
    assert verdicts.count(expected) == len(SEEDS), verdicts


def test_step_finding_says_why() -> None:
    history, tonight = history_rows(0, 1.10)
    finding = compare(tonight, history, Thresholds())
    assert finding.status == "regression" and finding.p_value < 0.01
    assert 0.07 < finding.p50_change < 0.13
    assert any(r.startswith("p50 ") and "limit 5%" in r for r in finding.reasons)
    assert finding.baseline_runs == tuple(range(1, NIGHTS))  # the last 7 nights


def test_accuracy_drop_beyond_the_gate_alarms_without_latency_change() -> None:
    history, tonight = history_rows(1, 1.0, tonight_accuracy=0.95)
    finding = compare(tonight, history, Thresholds())
    assert finding.status == "regression"
    assert [r for r in finding.reasons if r.startswith("accuracy")]
    history, tonight = history_rows(1, 1.0, tonight_accuracy=0.965)  # within the gate's 0.01
    assert compare(tonight, history, Thresholds()).status == "ok"


def test_short_history_gives_no_verdict() -> None:
    history, tonight = history_rows(2, 1.5)
    finding = compare(tonight, history[:2], Thresholds())
    assert finding.status == "insufficient-history" and "need 3" in finding.reasons[0]


def test_detect_through_the_store_and_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    rng = np.random.default_rng(7)
    with Store.open(url) as store:
        for _ in range(6):
            add_run(store, "nightly", {key: night_latencies(rng) for key in KEYS})
        quiet = detect(store)
        assert [f.status for f in quiet.findings] == ["ok", "ok"] and quiet.exit_code == 0
        assert quiet.thresholds.window == 5  # from the run's stored [thresholds]
        tonight = {KEYS[0]: night_latencies(rng, 1.10), KEYS[1]: night_latencies(rng, 1.03)}
        add_run(store, "nightly", tonight)
        report = detect(store)
    assert [(f.device, f.status) for f in report.findings] == [("pixel8-01", "regression"), ("rpi5-01", "ok")]

    json_out, junit = tmp_path / "regress.json", tmp_path / "junit.xml"
    cli = [sys.executable, "-m", "edgepack.cli", "farm", "regress", "--db", url, "--json-out", str(json_out), "--junit", str(junit)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "1 regression(s) in 2 key(s)" in done.stdout
    data = json.loads(json_out.read_text())
    assert data["regressions"] == 1 and data["summary"] == {"ok": 1, "regression": 1}
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("classname") for c in failed] == ["nightly.pixel8-01"]

    relaxed = subprocess.run([*cli[:5], "--db", url, "--p50", "0.2", "--p99", "0.5"], capture_output=True, text=True, timeout=120)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr


def test_missing_result_is_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with Store.open(f"sqlite:///{tmp_path / 'farm.sqlite'}") as store:
        for _ in range(3):
            add_run(store, "nightly", {key: night_latencies(rng) for key in KEYS})
        specs = [JobSpec(*KEYS[0][:2], "demo:digits", *KEYS[0][2:], 0), JobSpec(*KEYS[1][:2], "demo:digits", *KEYS[1][2:], 0)]
        run_id = store.start_run("nightly", {}, "local", [(KEYS[0][0], KEYS[0][2], "host"), (KEYS[1][0], KEYS[1][2], "host")], specs)
        first, second = store.jobs(run_id)
        store.job_attempt(first.id)
        store.record_result(first.id, synthetic_result(night_latencies(rng), device=KEYS[0][0]),
                            Provenance("demo:digits"))
        store.job_done(second.id, "skipped", "device offline: 3 consecutive jobs failed")
        store.finish_run(run_id)
        report = detect(store)
    assert {f.device: f.status for f in report.findings} == {"pixel8-01": "ok", "rpi5-01": "missing"}
    missing = next(f for f in report.findings if f.status == "missing")
    assert "device offline" in missing.reasons[0]
    assert report.exit_code == 1  # a device that produced nothing tonight does not disappear silently
    assert report.failed_devices == {"rpi5-01": "job skipped: device offline: 3 consecutive jobs failed"}
    assert 'failure message="no result tonight: job skipped: device offline' in report.to_junit()


def test_failed_device_without_history_fails_regress(tmp_path: Path) -> None:
    """The first night of a new device that fails (no history to miss it against) still exits 1, naming it."""
    rng = np.random.default_rng(5)
    url = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    with Store.open(url) as store:
        host, ssh = ("host-01", "digits", "host-ort", "fp32"), ("ssh-01", "digits", "host-ort", "fp32")
        specs = [JobSpec(*host[:2], "demo:digits", *host[2:], 0), JobSpec(*ssh[:2], "demo:digits", *ssh[2:], 0)]
        run_id = store.start_run("nightly", {}, "local", [(host[0], "host-ort", "host"), (ssh[0], "host-ort", "ssh://x")], specs)
        ok, failed = store.jobs(run_id)
        store.job_attempt(ok.id)
        store.record_result(ok.id, synthetic_result(night_latencies(rng), device=host[0]), Provenance("demo:digits"))
        store.job_attempt(failed.id)
        store.job_done(failed.id, "failed", "attempt 1: runner ssh://x: identity file /home/me/.ssh/id_ed25519 not found")
        store.finish_run(run_id)
        report = detect(store)
    assert {f.device: f.status for f in report.findings} == {"host-01": "insufficient-history", "ssh-01": "missing"}
    assert report.regressions == [] and report.exit_code == 1
    assert report.failed_devices == {
        "ssh-01": "job failed: attempt 1: runner ssh://x: identity file /home/me/.ssh/id_ed25519 not found"}
    assert report.to_dict()["missing"] == 1
    done = subprocess.run([sys.executable, "-m", "edgepack.cli", "farm", "regress", "--db", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "device ssh-01 produced no result tonight: job failed: attempt 1: runner ssh://x: identity file" in done.stdout
    assert done.stdout.splitlines()[-1] == (f"run {run_id} of nightly: 0 regression(s), 1 missing result(s) in 2 key(s); "
                                            "no result tonight from ssh-01")


def _summary_only(latencies: np.ndarray) -> "BenchResult":
    """What the adb runner stores: benchmark_model's summary statistics, no samples, no p90/p99/CIs."""
    import dataclasses

    full = synthetic_result(latencies, device="pixel8-01", runner="adb://SERIAL")
    return dataclasses.replace(full, latencies_ms=(), p90=None, p99=None, ci95_p50=None, ci95_p99=None, outliers=None,
                               percentiles_reason="benchmark_model publishes summary statistics only")


@pytest.mark.parametrize(("scale", "expect"), [(1.0, "ok"), (1.10, "regression")])
def test_summary_only_results_store_and_compare_on_the_threshold(tmp_path, scale, expect) -> None:
    rng = np.random.default_rng(7)
    with Store.open(f"sqlite:///{tmp_path / 'farm.sqlite'}") as store:
        key = KEYS[0]
        for night in range(6):
            scale_tonight = scale if night == 5 else 1.0
            spec = JobSpec(*key[:2], "demo:digits", *key[2:], 0)
            run_id = store.start_run("adb", {}, "local", [(key[0], key[2], "adb://SERIAL")], [spec])
            job = store.jobs(run_id)[0]
            store.job_attempt(job.id)
            provenance = Provenance("demo:digits", None, "b" * 64, "c" * 64, {}, None, None, None, None)
            store.record_result(job.id, _summary_only(night_latencies(rng, scale_tonight)), provenance)
            store.finish_run(run_id)
        report = detect(store, farm="adb")
    finding = next(f for f in report.findings if f.device == key[0])
    assert finding.status == expect, finding.reasons
    assert finding.p99 is None and finding.p_value is None
    assert "no raw samples: threshold only" in " ".join(finding.reasons)
