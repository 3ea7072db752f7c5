"""A throw-away PostgreSQL server on 127.0.0.1 for tests (``initdb`` + ``pg_ctl`` from the Debian
``postgresql`` package, which ``.ci/run`` installs).

PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
``postgres`` (or ``nobody``) account and the commands run through ``runuser``. :func:`start` returns
``None`` with the reason when no server can start; callers turn that into a visible skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@dataclass
class PgServer:
    port: int
    root: Path
    user: str | None
    """System account that owns the cluster (``None``: the current user)."""
    pg_ctl: str

    @property
    def url(self) -> str:
        return f"postgresql://edgepack@127.0.0.1:{self.port}/postgres"

    def psql(self, sql: str) -> str:
        """Run one SQL statement as the superuser over TCP (used to drop connections in tests)."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=edgepack dbname=postgres", autocommit=True) as c:
            cursor = c.execute(sql)
            return repr(cursor.fetchall() if cursor.description else [])

    def create_database(self, name: str) -> str:
        """A fresh empty database; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return f"postgresql://edgepack@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        _run(self.user, [self.pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _tool(name: str) -> str | None:
    for directory in PG_DIRS:
        if (directory / name).is_file():
            return str(directory / name)
    return shutil.which(name)


def _run(user: str | None, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    command = ["runuser", "-u", user, "--", *argv] if user else argv
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _service_user() -> str | None:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def start() -> tuple[PgServer | None, str]:
    """Start a server; returns (server, "") or (None, why it could not start)."""
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        return None, "initdb/pg_ctl not found (apt-get install postgresql; .ci/run installs it)"
    user: str | None = None
    if os.geteuid() == 0:
        user = _service_user()
        if user is None or shutil.which("runuser") is None:
            return None, "running as root and no 'postgres'/'nobody' account or runuser to run PostgreSQL as"
    root = Path(tempfile.mkdtemp(prefix="edgepack-pg-"))
    if user:
        os.chmod(root, 0o755)
        shutil.chown(root, user)
    port = _free_port()
    data, log = root / "data", root / "server.log"
    try:
        _run(user, [initdb, "-D", str(data), "-U", "edgepack", "--auth=trust", "-E", "UTF8", "--no-sync"])
        _run(user, [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60",
                    "-o", f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off", "start"])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        tail = log.read_text()[-500:] if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        return None, f"PostgreSQL did not start: {exc} {detail.strip()[-300:]} {tail}".strip()
    server = PgServer(port, root, user, pg_ctl)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            server.psql("select 1")
            return server, ""
        except Exception as exc:  # noqa: BLE001 - still starting
            last = exc
            time.sleep(0.2)
    server.stop()
    return None, f"PostgreSQL did not accept connections: {last}"


@pytest.fixture(scope="module")
def postgres():
    """A server for the test module (``from pg_server import postgres``); skips, saying why, when none starts."""
    server, why = start()
    if server is None:
        pytest.skip(f"no PostgreSQL server: {why}")
    yield server
    server.stop()
