"""SSH runner against a real OpenSSH server on 127.0.0.1 (started here with its own keys), URI checks,
and the on-device agent run as a subprocess."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgepack import api
from edgepack.device_bench.bench import artifact_from_manifest, bench_bundle, bench_inputs
from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.runners.base import JOB_FILE, RunnerError, job_to_dict, runner_for_uri
from edgepack.device_bench.runners.ssh import SshRunner
from edgepack.bundle.writer import read_manifest
from edgepack.errors import InputError

SSHD = Path("/usr/sbin/sshd")
CONFIG = BenchConfig(warmup=5, min_iters=30, min_seconds=0.2)


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    identity: Path
    known_hosts: Path
    workdir: Path

    @property
    def uri(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def options(self, **overrides: str) -> dict[str, str]:
        base = {"identity": str(self.identity), "known_hosts": str(self.known_hosts), "python": sys.executable}
        return base | overrides


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sshd exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"sshd did not listen on port {port}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    if not SSHD.is_file():
        pytest.skip(f"{SSHD} is not installed (apt-get install openssh-server; .ci/run installs it)")
    if shutil.which("ssh") is None or shutil.which("scp") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("the OpenSSH client (ssh, scp, ssh-keygen) is not installed")
    root = tmp_path_factory.mktemp("sshd")
    _keygen(root / "hostkey")
    _keygen(root / "client")
    (root / "authorized_keys").write_text((root / "client.pub").read_text())
    port = _free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'hostkey'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = root / "sshd.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, log)
        host_key = (root / "hostkey.pub").read_text().split()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        yield SshServer(port, getpass.getuser(), root / "client", root / "known_hosts", root)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ssh_bundle")
    return api.export("demo:digits", ["host-ort"], out=out, recipe_chain=["fp32"]).bundle


def _remote_dirs() -> set[str]:
    """Remote temp dirs on this machine (the ssh session has no TMPDIR, so mktemp uses /tmp)."""
    return {p.name for p in Path("/tmp").glob("edgepack-bench.*")}


def _removed_dir(result: BenchResult) -> Path:
    note = next(n for n in result.notes if n.startswith("remote temp dir"))
    match = re.match(r"remote temp dir (\S+) removed$", note)
    assert match, note
    return Path(match.group(1))


# --------------------------------------------------------------------------------------------------
# Real sshd
# --------------------------------------------------------------------------------------------------


def test_bench_over_ssh(sshd: SshServer, bundle: Path) -> None:
    before = _remote_dirs()
    [result] = bench_bundle(bundle, "host-ort", sshd.uri, CONFIG, runner_options=sshd.options())
    assert result.runner == sshd.uri
    assert result.device == socket.gethostname()
    assert result.target == "host-ort" and result.runtime == "onnxruntime" and result.precision == "fp32"
    assert result.p50 > 0 and result.iterations >= CONFIG.min_iters
    assert result.ci95_p50[0] <= result.p50 <= result.ci95_p50[1]
    assert result.cold_start_ms is not None and result.cold_start_ms > result.p50
    assert result.peak_mem_mb is not None and result.peak_mem_mb > 0
    assert (result.energy_mj_per_inference is None) == (result.energy_reason is not None)
    assert result.env["versions"]["onnxruntime"]
    remote = _removed_dir(result)
    assert remote.name.startswith("edgepack-bench.") and not remote.exists()
    assert _remote_dirs() == before


def test_options_in_uri_query(sshd: SshServer, bundle: Path) -> None:
    query = f"?identity={sshd.identity}&known_hosts={sshd.known_hosts}&python={sys.executable}"
    config = BenchConfig(warmup="auto", min_iters=20, min_seconds=0.1)
    [result] = bench_bundle(bundle, "host-ort", sshd.uri + query, config)
    assert result.runner == sshd.uri  # recorded without the options
    assert result.iterations >= 20 and result.warmup_mode == "auto"


def test_wrong_host_key_is_refused(sshd: SshServer, bundle: Path, tmp_path: Path) -> None:
    _keygen(tmp_path / "other")
    other = (tmp_path / "other.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(InputError, match="host key verification failed"):
        bench_bundle(bundle, "host-ort", sshd.uri, CONFIG, runner_options=sshd.options(known_hosts=str(known)))
    known.write_text("")  # unknown host: refused as well, never added
    with pytest.raises(InputError, match="host key verification failed"):
        bench_bundle(bundle, "host-ort", sshd.uri, CONFIG, runner_options=sshd.options(known_hosts=str(known)))
    assert known.read_text() == ""


def test_unknown_client_key_is_refused(sshd: SshServer, bundle: Path, tmp_path: Path) -> None:
    _keygen(tmp_path / "stranger")
    options = sshd.options(identity=str(tmp_path / "stranger"))
    with pytest.raises(InputError, match="authentication refused"):
        bench_bundle(bundle, "host-ort", sshd.uri, CONFIG, runner_options=options)


def test_remote_failure_still_cleans_up(sshd: SshServer, bundle: Path) -> None:
    before = _remote_dirs()
    with pytest.raises(RunnerError, match="agent exited with status 127") as caught:
        bench_bundle(bundle, "host-ort", sshd.uri, CONFIG, runner_options=sshd.options(python="/nonexistent/python3"))
    assert "?python=PATH" in str(caught.value)
    assert _remote_dirs() == before


# --------------------------------------------------------------------------------------------------
# URI validation (no server needed)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "ssh://root;reboot@127.0.0.1",
        "ssh://$(reboot)@127.0.0.1",
        "ssh://`id`@127.0.0.1",
        "ssh://-oProxyCommand=touch@127.0.0.1",
        "ssh://root@-oProxyCommand=touch",
        "ssh://root@host name",
        "ssh://root@127.0.0.1;id",
        "ssh://root@127.0.0.1:22|cat",
        "ssh://root@127.0.0.1:22&&id",
        "ssh://ro ot@127.0.0.1",
        "ssh://root@127.0.0.1:99999",
        "ssh://root@127.0.0.1/tmp",
        "ssh://root@$(id)",
        "ssh://",
    ],
)
def test_injection_uris_rejected(uri: str) -> None:
    with pytest.raises(InputError):
        runner_for_uri(uri)


def test_runner_options_checked(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    runner = runner_for_uri(f"ssh://pi@raspberrypi.local:2222?known_hosts={known}", python="python3.11")
    assert isinstance(runner, SshRunner) and runner.uri == "ssh://pi@raspberrypi.local:2222"
    assert runner.known_hosts == known and runner.python == "python3.11"
    with pytest.raises(InputError, match="unknown option"):
        runner_for_uri("ssh://pi@board?password=x")
    with pytest.raises(InputError, match="given twice"):
        runner_for_uri(f"ssh://pi@board?known_hosts={known}", known_hosts="/etc/other")
    with pytest.raises(InputError, match="not found"):
        runner_for_uri("ssh://pi@board", known_hosts=str(tmp_path / "missing"))
    with pytest.raises(InputError):
        runner_for_uri("ssh://pi@board", python="python3; rm -rf /")
    with pytest.raises(InputError, match="unknown scheme"):
        runner_for_uri("telnet://board")


# --------------------------------------------------------------------------------------------------
# The agent as the device runs it
# --------------------------------------------------------------------------------------------------


def _agent(job_dir: Path, runtime: str, config: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edgepack.device_bench.agent", str(job_dir)]
    command += ["--runtime", runtime, "--config", config]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_agent_prints_one_json_line(bundle: Path, tmp_path: Path) -> None:
    manifest = read_manifest(bundle)
    artifact = artifact_from_manifest(bundle, "host-ort", manifest)
    job = tmp_path / "job"
    job.mkdir()
    for file in artifact.files:
        shutil.copyfile(file, job / file.name)
    (job / JOB_FILE).write_text(json.dumps(job_to_dict(artifact, bench_inputs(manifest, artifact))))
    done = _agent(job, "onnxruntime", CONFIG.to_json())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    result = BenchResult.from_json(lines[0])
    assert result.iterations >= CONFIG.min_iters and result.p50 > 0
    assert BenchResult.from_json(result.to_json()) == result

    failed = _agent(job, "openvino", CONFIG.to_json())
    assert failed.returncode == 2
    assert json.loads(failed.stdout)["type"] == "InputError"
    bad_config = _agent(job, "onnxruntime", '{"min_iters": 0}')
    assert bad_config.returncode == 2 and "min_iters" in json.loads(bad_config.stdout)["error"]
