"""The ``ssh://user@host[:port]`` runner: Linux boards (Raspberry Pi, Jetson) with edgepack installed.

Per artifact: ``mktemp -d`` on the device -> ``scp`` the artifact files and ``artifact.json`` ->
``python3 -m edgepack.device_bench.agent`` -> parse its one JSON line -> ``rm -rf`` the temp dir, also
when anything before failed. The system ``ssh``/``scp`` run with argument lists (no local shell); the
one remote command line is built with :func:`shlex.quote`. Host keys are always verified
(``StrictHostKeyChecking=yes``); unknown or changed keys are refused.

Options (URI query ``?known_hosts=...`` or keyword options): ``identity`` (private key file),
``known_hosts`` (file to check the host key against; default: ssh's own), ``python`` (remote
interpreter, default ``python3``), ``connect_timeout`` (seconds, default 10).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from edgepack import errors
from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.runners.base import JOB_FILE, Runner, RunnerError, job_to_dict, remote_cleanup_note, split_uri
from edgepack.errors import EdgepackError, InputError, UnsupportedError
from edgepack.exporters.base import Artifact
from edgepack.models.source import TensorSpec

AGENT_MODULE = "edgepack.device_bench.agent"
STEP_TIMEOUT_S = 300.0
"""Bound of each step other than the agent run (mktemp, copy, cleanup)."""
AGENT_GRACE_S = 60.0
"""Added to ``BenchConfig.timeout_s`` for the agent run (interpreter start, runtime import)."""
REMOTE_PREFIX = "edgepack-bench."
REMOTE_TIMEOUT_STATUS = 124
"""Exit status of coreutils/busybox ``timeout`` when it stopped the agent."""

_USER = r"[A-Za-z_][A-Za-z0-9._-]{0,31}"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
_IPV6 = r"\[[0-9A-Fa-f:.]+\]"
_NETLOC = re.compile(rf"^(?:(?P<user>{_USER})@)?(?P<host>{_HOST}|{_IPV6})(?::(?P<port>[0-9]{{1,5}}))?/?$")
_OPTION_PATH = re.compile(r"^[^\s'\"%\\]+$")
_PYTHON = re.compile(r"^[A-Za-z0-9_./+-]+$")
_REMOTE_DIR = re.compile(rf"^/[A-Za-z0-9_./-]*/{re.escape(REMOTE_PREFIX)}[A-Za-z0-9]+$")


@dataclass(frozen=True)
class SshTarget:
    """A validated ``user@host:port``."""

    user: str | None
    host: str
    port: int | None

    @property
    def destination(self) -> str:
        """``user@host`` as ssh takes it (IPv6 without brackets)."""
        host = self.host.strip("[]")
        return f"{self.user}@{host}" if self.user else host

    def scp_destination(self, path: str) -> str:
        """``user@host:path`` as scp takes it (IPv6 in brackets)."""
        return f"{self.user}@{self.host}:{path}" if self.user else f"{self.host}:{path}"

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{self.user + '@' if self.user else ''}{self.host}{port}"


def parse_ssh_uri(uri: str) -> tuple[SshTarget, str]:
    """The target and the query of ``ssh://user@host[:port][?options]``; refuses anything else."""
    scheme, rest, query = split_uri(uri)
    match = _NETLOC.match(rest) if scheme == "ssh" else None
    if match is None:
        raise InputError(
            f"runner '{uri}': not a valid ssh://[user@]host[:port] address",
            hint="user and host may hold letters, digits, '.', '_' and '-' only, and may not start with '-'",
        )
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise InputError(f"runner '{uri}': port {port} is out of range")
    return SshTarget(match["user"], match["host"], port), query


def _option_path(uri: str, name: str, value: str | None) -> Path | None:
    if value is None:
        return None
    if not _OPTION_PATH.match(value) or value.startswith("-"):
        raise InputError(f"runner {uri}: {name} path '{value}' may not contain spaces, quotes, '%' or start with '-'")
    path = Path(value).expanduser()
    if not path.is_file():
        raise InputError(f"runner {uri}: {name} file {path} not found")
    return path


class SshRunner(Runner):
    """Benchmarks on a Linux device over SSH through the on-device agent."""

    scheme = "ssh"
    option_names = ("identity", "known_hosts", "python", "connect_timeout")

    def __init__(
        self,
        target: SshTarget,
        *,
        identity: Path | None = None,
        known_hosts: Path | None = None,
        python: str = "python3",
        connect_timeout: int = 10,
    ) -> None:
        if not _PYTHON.match(python) or python.startswith("-"):
            raise InputError(f"remote python '{python}': expected a command name or path")
        self.target = target
        self.identity = identity
        self.known_hosts = known_hosts
        self.python = python
        self.connect_timeout = connect_timeout

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, str]) -> "SshRunner":
        target, _ = parse_ssh_uri(uri)
        timeout = options.get("connect_timeout", "10")
        if not timeout.isdigit() or int(timeout) < 1:
            raise InputError(f"runner {uri}: connect_timeout '{timeout}' must be a positive whole number of seconds")
        return cls(
            target,
            identity=_option_path(uri, "identity", options.get("identity")),
            known_hosts=_option_path(uri, "known_hosts", options.get("known_hosts")),
            python=options.get("python", "python3"),
            connect_timeout=int(timeout),
        )

    @property
    def uri(self) -> str:
        return str(self.target)

    # -- local commands --------------------------------------------------------------------------

    def _options(self) -> list[str]:
        options = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if self.known_hosts is not None:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity is not None:
            options += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return options

    def _port(self, flag: str) -> list[str]:
        return [flag, str(self.target.port)] if self.target.port is not None else []

    def _call(self, argv: Sequence[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
        if shutil.which(argv[0]) is None:
            raise UnsupportedError(f"'{argv[0]}' not found on PATH", hint="install the OpenSSH client")
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RunnerError(f"{self.uri}: {what} timed out after {timeout:g} s") from None
        if done.returncode == 255:
            self._connection_error(done.stderr, what)
        return done

    def _connection_error(self, stderr: str, what: str) -> None:
        lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("@")]
        last = lines[-1] if lines else "ssh exited with status 255"
        known = self.known_hosts or "~/.ssh/known_hosts"
        if "Host key verification failed" in stderr or "host key is known" in stderr:
            scan = f"ssh-keyscan -p {self.target.port or 22} {self.target.host.strip('[]')} >> {known}"
            raise InputError(
                f"{self.uri}: host key verification failed against {known}",
                hint=f"check the device's key fingerprint, then add it: {scan}",
            )
        if "Permission denied" in stderr:
            raise InputError(f"{self.uri}: authentication refused ({last})", hint="pass ?identity=/path/to/private_key")
        raise RunnerError(f"{self.uri}: {what} failed: {last}")

    def _ssh(self, command: str, what: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *self._options(), *self._port("-p"), "--", self.target.destination, command]
        return self._call(argv, what, timeout)

    # -- steps -------------------------------------------------------------------------------------

    def _mktemp(self) -> str:
        done = self._ssh(f'mktemp -d "${{TMPDIR:-/tmp}}/{REMOTE_PREFIX}XXXXXX"', "creating a remote temp dir")
        path = done.stdout.strip()
        if done.returncode != 0 or not _REMOTE_DIR.match(path):
            raise RunnerError(f"{self.uri}: mktemp -d failed: {(done.stderr.strip() or path)[:200]}")
        return path

    def _copy(self, stage: Path, remote: str) -> None:
        destination = self.target.scp_destination(remote + "/")
        argv = ["scp", "-q", "-r", *self._options(), *self._port("-P"), "--", str(stage), destination]
        done = self._call(argv, "copying the artifact", STEP_TIMEOUT_S)
        if done.returncode != 0:
            raise RunnerError(f"{self.uri}: copying the artifact failed: {done.stderr.strip()[:300]}")

    def _agent_command(self, remote_job: str, runtime: str, config: BenchConfig) -> str:
        parts = (self.python, "-m", AGENT_MODULE, remote_job, "--runtime", runtime, "--config", config.to_json())
        agent = " ".join(shlex.quote(part) for part in parts)
        limit = int(config.timeout_s + AGENT_GRACE_S)
        return (
            f"cd {shlex.quote(remote_job)} && if command -v timeout >/dev/null 2>&1; "
            f"then exec timeout -k 10 {limit} {agent}; else exec {agent}; fi"
        )

    def _parse(self, done: subprocess.CompletedProcess[str]) -> BenchResult:
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        try:
            data = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "error" in data:
            cls = getattr(errors, str(data.get("type")), None)
            cls = cls if isinstance(cls, type) and issubclass(cls, EdgepackError) else RunnerError
            raise cls(f"{self.uri}: {data['error']}")
        if done.returncode == REMOTE_TIMEOUT_STATUS:
            raise RunnerError(f"{self.uri}: the agent ran past the run's timeout and was stopped on the device")
        if done.returncode != 0 or not isinstance(data, dict):
            detail = [line for line in done.stderr.splitlines() if line.strip()]
            last = detail[-1][:300] if detail else "no output"
            raise RunnerError(
                f"{self.uri}: the agent exited with status {done.returncode}: {last}",
                hint=f"is edgepack installed for '{self.python}' on the device? pick the interpreter: ?python=PATH",
            )
        return BenchResult.from_dict(data)

    def _cleanup(self, remote: str) -> str:
        """Remove the remote temp dir; returns a note (never raises, so the run's own error wins)."""
        return remote_cleanup_note(remote, lambda: self._ssh(f"rm -rf -- {shlex.quote(remote)}", "removing the remote temp dir"))

    def run(
        self, artifact: Artifact, config: BenchConfig, *, inputs: Sequence[TensorSpec] | None = None
    ) -> BenchResult:
        specs = tuple(inputs) if inputs is not None else artifact.inputs
        with tempfile.TemporaryDirectory(prefix="edgepack-ssh-") as local:
            stage = Path(local) / "job"
            _stage(artifact, specs, stage)
            remote = self._mktemp()
            try:
                self._copy(stage, remote)
                command = self._agent_command(f"{remote}/job", artifact.runtime, config)
                done = self._ssh(command, "the agent run", config.timeout_s + AGENT_GRACE_S + self.connect_timeout)
                result = self._parse(done)
            finally:
                note = self._cleanup(remote)
        return replace(result, runner=self.uri, notes=(*result.notes, note))


def _stage(artifact: Artifact, inputs: Sequence[TensorSpec], stage: Path) -> None:
    """``stage/artifact.json`` plus links to the artifact's files (scp copies what links point at)."""
    root = artifact.path.parent
    stage.mkdir(parents=True)
    (stage / JOB_FILE).write_text(json.dumps(job_to_dict(artifact, inputs)), encoding="utf-8")
    for file in artifact.files:
        link = stage / file.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(file.resolve())
