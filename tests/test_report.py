"""The farm's HTML report from a synthetic history in a real SQLite store: self-contained (every plot an
embedded PNG, nothing fetched), regressions highlighted; rendered by headless Chromium when installed."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgepack.farm.report import render_report, write_report
from edgepack.farm.store import JobSpec, Provenance, Store
from test_regress import KEYS, add_run, night_latencies
from test_store import synthetic_result

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
IMG = re.compile(r'<img class="plot" alt="([^"]*)" src="([^"]*)"')


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Five quiet nights, then a night where the first key's latency steps up 10 %, a third device,
    offline, has its job skipped, and a fourth device, still marked online, failed its job."""
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'farm.sqlite'}"
    rng = np.random.default_rng(11)
    with Store.open(url) as store:
        for _ in range(5):
            add_run(store, "nightly", {key: night_latencies(rng) for key in KEYS})
        tonight = {KEYS[0]: night_latencies(rng, 1.10), KEYS[1]: night_latencies(rng)}
        offline = JobSpec("jetson-01", "digits", "demo:digits", "jetson-orin", "int8", 0)
        failing = JobSpec("ssh-01", "digits", "demo:digits", "host-ort", "fp32", 0)
        specs = [JobSpec(d, m, "demo:digits", t, r, 0) for d, m, t, r in KEYS] + [offline, failing]
        devices = [(s.device, s.target, "host") for s in specs]
        run_id = store.start_run("nightly", {"thresholds": {"window": 5}}, "local", devices, specs)
        for job in store.jobs(run_id):
            if job.spec == offline:
                store.job_done(job.id, "skipped", "device offline: 3 consecutive jobs failed")
                continue
            if job.spec == failing:
                store.job_attempt(job.id)
                store.job_done(job.id, "failed", "attempt 1: runner ssh://x: identity file ~/.ssh/id_ed25519 not found")
                continue
            store.job_attempt(job.id)
            store.record_result(job.id, synthetic_result(tonight[job.spec.key], device=job.spec.device),
                                Provenance("demo:digits", None, "b" * 64, "c" * 64, {}, "accuracy:top1", 0.97, 0.98, 0.01))
        store.set_device_status("jetson-01", "offline", "3 consecutive jobs failed")
        store.finish_run(run_id)
    return url


def test_report_is_self_contained_and_highlights_regressions(history: str, tmp_path: Path) -> None:
    with Store.open(history) as store:
        html = render_report(store)
        out = write_report(store, tmp_path / "sub" / "report.html")
    assert out.read_text() == html
    assert "<script" not in html and "<link" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    images = IMG.findall(html)
    alts = [alt for alt, _ in images]
    assert alts == ["latency history of pixel8-01", "percentiles of pixel8-01", "latency history of rpi5-01",
                    "percentiles of rpi5-01", "accuracy versus latency on android-pixel8",
                    "accuracy versus latency on linux-arm64-cpu"]
    for _, src in images:
        assert src.startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        picture.verify()
        assert picture.size[0] > 200 and picture.size[1] > 100
    rows = re.findall(r'<tr class="regression">(.*?)</tr>', html, re.S)
    assert len(rows) == 2  # the finding and the device table row
    assert all("pixel8-01" in rows[0] and "regression" in row for row in rows)
    assert "Regressions (1)" in html
    assert "jetson-01" in html and "device offline: 3 consecutive jobs failed" in html


def _device_section(html: str, device: str) -> str:
    section = html[html.index(f'<h2 id="device-{device}">'):]
    return section[:section.index("<h2", 5)]


def test_failed_devices_are_red_with_their_last_error(history: str) -> None:
    with Store.open(history) as store:
        html = render_report(store)
    ssh = _device_section(html, "ssh-01")  # failed tonight while its stored status still says online
    assert '<span class="device-failed">failed</span>' in ssh and "online" not in ssh
    assert "Last error: <span class=\"error\">attempt 1: runner ssh://x: identity file ~/.ssh/id_ed25519 not found" in ssh
    jetson = _device_section(html, "jetson-01")
    assert '<span class="device-failed">failed (offline)</span>' in jetson and "3 consecutive jobs failed" in jetson
    assert '<span class="device-ok">ok</span>' in _device_section(html, "pixel8-01")
    alert = html[html.index('id="failing-devices"'):]
    alert = alert[:alert.index("</div>")]
    assert "2 device(s) failed in this run" in alert and "ssh-01" in alert and "jetson-01" in alert
    assert "pixel8-01" not in alert and "rpi5-01" not in alert
    missing = re.findall(r'<tr class="missing">(.*?)</tr>', html, re.S)
    assert len(missing) == 2 and "ssh-01" in missing[1] and "identity file" in missing[1]
    css = html[html.index("<style>"):html.index("</style>")]
    assert re.search(r"\.device-failed[^{]*\{[^}]*background: #b00020", css)  # red


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={cwd / 'profile'}", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_chromium(history: str, tmp_path: Path) -> None:
    with Store.open(history) as store:
        report = write_report(store, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    done = _chromium("--window-size=1200,2400", f"--screenshot={shot}", report.as_uri(), cwd=tmp_path)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (2400, 1200)
    background = np.all(pixels >= 250, axis=2).mean()
    assert 0.3 < background < 0.98  # a white page with tables and plots on it, not a blank one
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # plot colours, not just text

    # The same page with a probe that lists, after load, which images decoded (naturalWidth > 0).
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", "<script>window.addEventListener('load', () => {"
                     "document.title = 'IMAGES:' + [...document.images].map(i => i.complete && i.naturalWidth > 0 ? 1 : 0)"
                     ".join('');});</script></body>"))
    dom = _chromium("--dump-dom", "--virtual-time-budget=10000", probe.as_uri(), cwd=tmp_path).stdout
    loaded = re.search(r"<title>IMAGES:([01]*)</title>", dom)
    assert loaded, dom[:2000]
    assert loaded.group(1) == "1" * len(IMG.findall(report.read_text())) and len(loaded.group(1)) == 6
