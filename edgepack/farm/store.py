"""The results database of the device farm: SQLAlchemy, a SQLite file by default, PostgreSQL by URL.

Tables (created and upgraded by the Alembic migrations in ``farm/migrations``):

- ``runs``: one farm run (farm name, config and its hash, executor, host, status, times); its status is
  ``running``, ``finished``, or ``interrupted`` (SIGINT/SIGTERM stopped it; ``--resume`` continues it, as
  it continues a ``running`` run whose farm process died);
- ``devices``: every device ever seen (profile, runner URI, online/offline and why);
- ``jobs``: one (device, model, target, recipe) per run with its status
  (``pending``/``running``/``ok``/``failed``/``skipped``), attempts and last error;
- ``results``: one per finished job: summary columns, the raw latencies, the whole
  :class:`~edgepack.device_bench.config.BenchResult`, and the provenance that makes every number
  traceable to its artifact (source, bundle and artifact SHA-256, toolchain versions, gate accuracy).

Every state change is its own short transaction, retried when the database connection dropped
(:meth:`Store.transaction`), so a crash or a lost connection loses at most the job in flight.

``--db`` takes ``sqlite:///PATH``, a plain file path (SQLite) or ``postgresql://``. Opening for reading
(``farm regress``/``report``) refuses a SQLite file that does not exist (a typo must not yield an empty
database); opening for writing creates the file but not a missing directory. A file that is not a SQLite
database, a read-only or unwritable store, and any other failure to open or write it is one
:class:`~edgepack.errors.InputError` / :class:`~edgepack.errors.OutputError` naming the database and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from edgepack._text import first_line
from edgepack.version import __version__
from edgepack.device_bench.config import BenchResult
from edgepack.errors import EdgepackError, InputError, OutputError

T = TypeVar("T")

DB_ENV = "EDGEPACK_DB"
"""Environment variable naming the default database URL."""
DB_FILE = "farm.sqlite"
RETRIES = 5
"""Attempts of one transaction when the connection drops."""
RETRY_BASE_S = 0.2

JOB_STATES = ("pending", "running", "ok", "failed", "skipped")
FINAL_JOB_STATES = ("ok", "failed", "skipped")
RUN_STATES = ("running", "finished", "interrupted")
UNFINISHED_RUN_STATES = ("running", "interrupted")
"""Runs ``--resume`` continues: the farm process died (``running``) or was stopped by a signal."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the farm tables."""


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    farm: Mapped[str] = mapped_column(String(200), index=True)
    config_sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    executor: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    edgepack_version: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    resumes: Mapped[int] = mapped_column(Integer, default=0)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    profile: Mapped[str] = mapped_column(String(200))
    runner: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(20))
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("run_id", "device_id", "model", "target", "recipe", name="uq_jobs_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    model: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(1000))
    target: Mapped[str] = mapped_column(String(200))
    recipe: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    model: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(200))
    recipe: Mapped[str] = mapped_column(String(200))
    runner: Mapped[str] = mapped_column(String(500))
    runtime: Mapped[str] = mapped_column(String(100))
    precision: Mapped[str] = mapped_column(String(50))
    iterations: Mapped[int] = mapped_column(Integer)
    p50: Mapped[float] = mapped_column(Float)
    p90: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95: Mapped[float] = mapped_column(Float)
    p99: Mapped[float | None] = mapped_column(Float, nullable=True)
    mean: Mapped[float] = mapped_column(Float)
    std: Mapped[float] = mapped_column(Float)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    p50_ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    p50_ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    cold_start_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_mem_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_mj: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy_metric: Mapped[str | None] = mapped_column(String(100), nullable=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy_reference: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy_max_drop: Mapped[float | None] = mapped_column(Float, nullable=True)
    source_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    toolchain: Mapped[dict[str, Any]] = mapped_column(JSON)
    latencies_ms: Mapped[list[float]] = mapped_column(JSON)
    bench: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The whole BenchResult except its latencies (env, config, notes, reasons, sustained, thermal)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


# --------------------------------------------------------------------------------------------------
# Plain records handed to callers (never ORM objects: they outlive their session and cross threads)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """One job to plan: measure ``model`` exported for ``target`` with ``recipe`` on ``device``."""

    device: str
    model: str
    source: str
    target: str
    recipe: str
    position: int = 0

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.device, self.model, self.target, self.recipe)


@dataclass(frozen=True)
class JobRow:
    id: int
    run_id: int
    spec: JobSpec
    status: str
    attempts: int
    error: str | None


@dataclass(frozen=True)
class Provenance:
    """What a result was measured on: every number traceable to its artifact."""

    source: str
    source_sha256: str | None = None
    bundle_sha256: str | None = None
    artifact_sha256: str | None = None
    toolchain: Mapping[str, str] = field(default_factory=dict)
    accuracy_metric: str | None = None
    accuracy: float | None = None
    accuracy_reference: float | None = None
    accuracy_max_drop: float | None = None


@dataclass(frozen=True)
class ResultRow:
    """A stored result with its key and provenance (what regress and report read)."""

    id: int
    run_id: int
    run_started_at: datetime
    device: str
    model: str
    target: str
    recipe: str
    runner: str
    precision: str
    p50: float
    p90: float | None
    p99: float | None
    p50_ci: tuple[float, float] | None
    p99_ci: tuple[float, float] | None
    """``None`` (with p90/p99) for runners whose tool publishes summary statistics only (adb benchmark_model)."""
    latencies_ms: tuple[float, ...]
    cold_start_ms: float | None
    peak_mem_mb: float | None
    energy_mj: float | None
    accuracy_metric: str | None
    accuracy: float | None
    accuracy_reference: float | None
    accuracy_max_drop: float | None
    bundle_sha256: str | None
    artifact_sha256: str | None
    toolchain: Mapping[str, str]

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.device, self.model, self.target, self.recipe)


@dataclass(frozen=True)
class RunRow:
    id: int
    farm: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    config: Mapping[str, Any]
    executor: str
    resumes: int


# --------------------------------------------------------------------------------------------------
# URLs and migrations
# --------------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """The platform's per-user data directory for edgepack."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "edgepack"


def default_db_url() -> str:
    """``$EDGEPACK_DB``, else a SQLite file in :func:`data_dir`."""
    return os.environ.get(DB_ENV) or f"sqlite:///{data_dir() / DB_FILE}"


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` (driven by psycopg 3), ``sqlite:///path`` and a plain file path (a SQLite
    file, made absolute); refuse anything else."""
    if "://" not in url and not url.startswith("sqlite:"):
        if not url.strip():
            raise InputError("--db: empty database URL", hint="use sqlite:///PATH, a file path or postgresql://user@host/db")
        url = f"sqlite:///{Path(url).expanduser().absolute()}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InputError(f"--db {url}: not a database URL",
                         hint="use sqlite:///PATH, a file path or postgresql://user@host/db") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend not in ("sqlite", "postgresql"):
        raise InputError(f"--db {parsed.render_as_string()}: unsupported database '{backend}'", hint="sqlite or postgresql")
    return parsed.render_as_string(hide_password=False)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (``sqlite:///PATH`` or ``sqlite:///file:PATH?...&uri=true``);
    ``None`` for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database.startswith("file:") and parsed.query.get("uri") == "true":
        database = database[len("file:"):].split("?")[0]
        if database.startswith("//"):  # file://host/path: only the local host
            database = "/" + database[2:].split("/", 1)[-1]
    if not database or database == ":memory:" or parsed.query.get("mode") == "memory":
        return None
    return Path(database).expanduser()


def _check_sqlite_file(path: Path, label: str, *, create: bool, make_parent: bool) -> None:
    """Refuse, with one line naming the database and the fix, a SQLite file that cannot serve: a missing file
    when reading, a missing or unwritable directory or an unwritable file when writing, a directory."""
    if path.is_dir():
        raise InputError(f"{label}: {path} is a directory, not a database file", hint="name a file inside it")
    if path.exists():
        if create and not os.access(path, os.R_OK | os.W_OK):
            raise OutputError(f"{label}: {path} is read-only", hint="make it writable or use another --db")
        if create and not os.access(path.parent, os.W_OK | os.X_OK):  # SQLite writes its journal beside the file
            raise OutputError(f"{label}: cannot write {path}: directory {path.parent} is not writable",
                              hint="make it writable or use another --db")
        if not os.access(path, os.R_OK):
            raise InputError(f"{label}: {path} is not readable", hint="fix its permissions or use another --db")
        return
    if not create:
        missing = "" if path.parent.is_dir() else f": directory {path.parent} does not exist"
        raise InputError(f"{label}: no database file {path}{missing}",
                         hint="check the path; `edgepack farm run --db ...` creates the database")
    parent = path.parent
    if not parent.exists() and make_parent:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{label}: cannot create the directory {parent}: {exc.strerror or exc}",
                              hint="create it or set $EDGEPACK_DB / --db") from None
    if not parent.is_dir():
        raise InputError(f"{label}: directory {parent} does not exist", hint="create it or fix the path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: cannot create {path}: directory {parent} is not writable",
                          hint="make it writable or use another --db")


def _display(url: str) -> str:
    """``url`` as given, its password hidden."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def _sqlite_code(exc: BaseException) -> str:
    return str(getattr(getattr(exc, "orig", None), "sqlite_errorname", "") or "")


def _first_line(exc: BaseException) -> str:
    return first_line(getattr(exc, "orig", None) or exc)


def database_error(exc: DBAPIError, label: str, path: Path | None = None) -> EdgepackError | None:
    """A database failure that is the database's (not the farm's) as one user-facing line, or ``None``
    when ``exc`` is a bug to show in full (integrity, programming errors)."""
    if type(exc) not in (OperationalError, DatabaseError):
        return None
    code, reason = _sqlite_code(exc), _first_line(exc)
    where = path if path is not None else "the database"
    if code == "SQLITE_NOTADB":
        return InputError(f"{label}: {where} is not a SQLite database ({reason})",
                          hint="point --db at a farm database, or at a new file to create one")
    if code == "SQLITE_CORRUPT" or code.startswith("SQLITE_CORRUPT"):
        return InputError(f"{label}: {where} is damaged ({reason})", hint="restore it from a backup or use another --db")
    if code.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN", "SQLITE_FULL", "SQLITE_IOERR")):
        return OutputError(f"{label}: cannot write {where}: {reason}",
                           hint="make the file and its directory writable, free space, or use another --db")
    if code == "SQLITE_BUSY" or code.startswith("SQLITE_LOCKED"):
        return OutputError(f"{label}: {where} is locked by another process ({reason})",
                           hint="wait for it to finish or use another --db")
    return OutputError(f"{label}: database error: {reason}", hint="check that the database is reachable and writable")


def _engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url, pool_pre_ping=True)


def migrations_config(connection: Any = None) -> Any:
    """The Alembic config of the farm schema (scripts shipped in the package)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema of ``engine``'s database to ``revision``."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(migrations_config(connection), revision)


def _is_disconnect(exc: BaseException, backend: str = "postgresql") -> bool:
    """A dropped connection worth retrying. SQLite has no connection to lose: its OperationalErrors
    (read-only file, disk full, locked beyond the busy timeout) are final."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return backend != "sqlite" and isinstance(exc, OperationalError)


def config_sha256(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def bundle_provenance(bundle: Path, target: str) -> Provenance:
    """Source, bundle/artifact hashes, toolchain and gate accuracy of ``target`` in ``bundle``."""
    from edgepack.bundle.writer import read_manifest
    from edgepack.hashing import file_sha256

    manifest = read_manifest(bundle)
    entry = (manifest.get("targets") or {}).get(target) or {}
    gate = entry.get("gate") or {}
    source = manifest.get("source") or {}

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return Provenance(
        source=str(source.get("uri", "")),
        source_sha256=source.get("sha256"),
        bundle_sha256=file_sha256(Path(bundle) / "manifest.json"),
        artifact_sha256=(entry.get("artifact") or {}).get("sha256"),
        toolchain=dict(entry.get("toolchain") or {}),
        accuracy_metric=(f"{gate.get('kind')}:{gate.get('metric')}" if gate.get("metric") else None),
        accuracy=number(gate.get("value")),
        accuracy_reference=number(gate.get("baseline")),
        accuracy_max_drop=number(gate.get("max_drop")),
    )


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------


class Store:
    """Farm results in one database. Open with :meth:`open`; thread-safe (one session per call)."""

    def __init__(self, engine: Engine, *, label: str | None = None) -> None:
        self.engine = engine
        self.label = label or f"--db {self.url}"
        """How error messages name the database (the ``--db`` value as given)."""
        self._file = sqlite_file(engine.url.render_as_string(hide_password=False))
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str | None = None, *, migrate: bool = True, create: bool = True) -> "Store":
        """Connect to ``url`` (default :func:`default_db_url`) and upgrade its schema.

        ``create=False`` (commands that only read) refuses a SQLite file that does not exist instead of
        creating an empty database. Every failure to open is one :class:`InputError` or
        :class:`OutputError` naming the database.
        """
        if url:
            label = f"--db {_display(url)}"
        elif os.environ.get(DB_ENV):
            label = f"${DB_ENV} {_display(os.environ[DB_ENV])}"
        else:
            label = "the default database"
        normalized = normalize_url(url or default_db_url())
        path = sqlite_file(normalized)
        if path is not None:
            _check_sqlite_file(path, label, create=create, make_parent=not url and not os.environ.get(DB_ENV))
        engine = _engine(normalized)
        store = cls(engine, label=label)
        if migrate:
            try:
                upgrade(engine)
            except DBAPIError as exc:
                engine.dispose()
                error = database_error(exc, label, path)
                if error is None:
                    raise
                if path is None and isinstance(exc, OperationalError):
                    error = InputError(f"{label}: cannot open the database: {_first_line(exc)}",
                                       hint="check the URL, the server and the credentials")
                raise error from None
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction; when the connection drops, retry it on a fresh connection.
        A failure of the database itself (read-only, disk full, not a database, unreachable after the
        retries) is one :class:`OutputError`/:class:`InputError` line naming the database."""
        backend = self.engine.url.get_backend_name()
        for attempt in range(1, RETRIES + 1):
            try:
                with self._sessions.begin() as session:
                    return work(session)
            except DBAPIError as exc:
                if not _is_disconnect(exc, backend) or attempt == RETRIES:
                    error = database_error(exc, self.label, self._file)
                    if error is None:
                        raise
                    raise error from None
                time.sleep(RETRY_BASE_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    # ---- runs ------------------------------------------------------------------------------------

    def start_run(
        self, farm: str, config: Mapping[str, Any], executor: str, devices: Sequence[tuple[str, str, str]],
        jobs: Sequence[JobSpec],
    ) -> int:
        """Create a run with its ``jobs`` (all pending); ``devices`` are (id, profile, runner URI)."""

        def work(session: Session) -> int:
            for device_id, profile, runner in devices:
                self._put_device(session, device_id, profile, runner, "online", None)
            run = Run(
                farm=farm, config=dict(config), config_sha256=config_sha256(config), executor=executor,
                host=socket.gethostname(), edgepack_version=__version__, status="running", started_at=_now(),
                resumes=0,
            )
            session.add(run)
            session.flush()
            session.add_all(
                Job(run_id=run.id, device_id=j.device, model=j.model, source=j.source, target=j.target,
                    recipe=j.recipe, position=j.position, status="pending", attempts=0)
                for j in jobs
            )
            return run.id

        return self.transaction(work)

    def unfinished_run(self, farm: str, config: Mapping[str, Any]) -> int | None:
        """The latest run of ``farm`` with this exact config that never finished (the farm process died, or a
        signal interrupted it)."""
        digest = config_sha256(config)

        def work(session: Session) -> int | None:
            query = (select(Run.id).where(Run.farm == farm, Run.config_sha256 == digest,
                                          Run.status.in_(UNFINISHED_RUN_STATES))
                     .order_by(Run.id.desc()).limit(1))
            return session.scalar(query)

        return self.transaction(work)

    def resume_run(self, run_id: int, devices: Sequence[tuple[str, str, str]]) -> None:
        """Jobs left ``running`` by a crash go back to ``pending``; finished jobs stay as they are."""

        def work(session: Session) -> None:
            for device_id, profile, runner in devices:
                self._put_device(session, device_id, profile, runner, "online", None)
            session.execute(update(Job).where(Job.run_id == run_id, Job.status == "running").values(status="pending"))
            run = session.get(Run, run_id)
            if run is None:
                raise InputError(f"run {run_id}: no such run")
            run.resumes += 1
            run.status = "running"

        self.transaction(work)

    def interrupt_run(self, run_id: int) -> None:
        """Mark the run ``interrupted`` (a signal stopped the farm): the jobs it was running go back to
        ``pending`` so that ``--resume`` runs them again; finished jobs stay as they are."""

        def work(session: Session) -> None:
            session.execute(update(Job).where(Job.run_id == run_id, Job.status == "running").values(status="pending"))
            session.execute(update(Run).where(Run.id == run_id, Run.status == "running").values(status="interrupted"))

        self.transaction(work)

    def finish_run(self, run_id: int) -> None:
        def work(session: Session) -> None:
            session.execute(update(Run).where(Run.id == run_id).values(status="finished", finished_at=_now()))

        self.transaction(work)

    def runs(self, farm: str | None = None) -> list[RunRow]:
        """Runs, oldest first."""

        def work(session: Session) -> list[RunRow]:
            query = select(Run).order_by(Run.started_at, Run.id)
            if farm is not None:
                query = query.where(Run.farm == farm)
            return [
                RunRow(r.id, r.farm, r.status, r.started_at, r.finished_at, r.config, r.executor, r.resumes)
                for r in session.scalars(query)
            ]

        return self.transaction(work)

    # ---- devices ---------------------------------------------------------------------------------

    @staticmethod
    def _put_device(session: Session, device_id: str, profile: str, runner: str, status: str, reason: str | None) -> None:
        device = session.get(Device, device_id)
        if device is None:
            device = Device(id=device_id)
            session.add(device)
        device.profile, device.runner, device.status, device.status_reason = profile, runner, status, reason
        device.updated_at = _now()

    def set_device_status(self, device_id: str, status: str, reason: str | None = None) -> None:
        def work(session: Session) -> None:
            session.execute(update(Device).where(Device.id == device_id)
                            .values(status=status, status_reason=reason, updated_at=_now()))

        self.transaction(work)

    def devices(self) -> dict[str, dict[str, Any]]:
        def work(session: Session) -> dict[str, dict[str, Any]]:
            return {
                d.id: {"profile": d.profile, "runner": d.runner, "status": d.status, "reason": d.status_reason}
                for d in session.scalars(select(Device).order_by(Device.id))
            }

        return self.transaction(work)

    # ---- jobs ------------------------------------------------------------------------------------

    def jobs(self, run_id: int, *, status: str | None = None) -> list[JobRow]:
        """Jobs of a run in queue order (device, position)."""

        def work(session: Session) -> list[JobRow]:
            query = select(Job).where(Job.run_id == run_id).order_by(Job.device_id, Job.position, Job.id)
            if status is not None:
                query = query.where(Job.status == status)
            return [
                JobRow(j.id, j.run_id, JobSpec(j.device_id, j.model, j.source, j.target, j.recipe, j.position),
                       j.status, j.attempts, j.error)
                for j in session.scalars(query)
            ]

        return self.transaction(work)

    def job_attempt(self, job_id: int) -> int:
        """Mark the job running and count the attempt; returns the attempt number."""

        def work(session: Session) -> int:
            job = session.get(Job, job_id)
            assert job is not None
            job.status, job.attempts = "running", job.attempts + 1
            job.started_at = job.started_at or _now()
            return job.attempts

        return self.transaction(work)

    def job_error(self, job_id: int, error: str) -> None:
        """Record a failed attempt's error (the job stays running while it is retried)."""

        def work(session: Session) -> None:
            session.execute(update(Job).where(Job.id == job_id).values(error=error[:4000]))

        self.transaction(work)

    def job_done(self, job_id: int, status: str, error: str | None = None) -> None:
        """Finish a job without a result (``failed`` or ``skipped``)."""
        if status not in FINAL_JOB_STATES or status == "ok":
            raise ValueError(f"job status {status!r}: use record_result for ok")

        def work(session: Session) -> None:
            session.execute(update(Job).where(Job.id == job_id)
                            .values(status=status, error=(error or "")[:4000] or None, finished_at=_now()))

        self.transaction(work)

    def record_result(self, job_id: int, result: BenchResult, provenance: Provenance) -> int:
        """Store ``result`` for the job and mark it ``ok``, in one transaction. Idempotent per job."""

        def work(session: Session) -> int:
            job = session.get(Job, job_id)
            assert job is not None
            existing = session.scalar(select(Result.id).where(Result.job_id == job_id))
            if existing is not None:
                return existing
            row = _result_row(job, result, provenance)
            session.add(row)
            job.status, job.error, job.finished_at = "ok", None, _now()
            session.flush()
            return row.id

        return self.transaction(work)

    # ---- results ---------------------------------------------------------------------------------

    def results(self, *, farm: str | None = None, run_id: int | None = None) -> list[ResultRow]:
        """Stored results, oldest run first (optionally of one farm or one run)."""

        def work(session: Session) -> list[ResultRow]:
            query = select(Result, Run.started_at).join(Run, Result.run_id == Run.id).order_by(Run.started_at, Run.id, Result.id)
            if farm is not None:
                query = query.where(Run.farm == farm)
            if run_id is not None:
                query = query.where(Result.run_id == run_id)
            return [_row(r, started) for r, started in session.execute(query)]

        return self.transaction(work)

    def bench_result(self, result_id: int) -> BenchResult:
        """The stored :class:`BenchResult` of one result row, as it was measured."""

        def work(session: Session) -> BenchResult:
            row = session.get(Result, result_id)
            if row is None:
                raise InputError(f"result {result_id}: no such result")
            return BenchResult.from_dict({**row.bench, "latencies_ms": row.latencies_ms})

        return self.transaction(work)


def _result_row(job: Job, result: BenchResult, provenance: Provenance) -> Result:
    bench = result.to_dict()
    latencies = bench.pop("latencies_ms")
    return Result(
        job_id=job.id, run_id=job.run_id, device_id=job.device_id, model=job.model, target=job.target,
        recipe=job.recipe, runner=result.runner, runtime=result.runtime, precision=result.precision,
        iterations=result.iterations, p50=result.p50, p90=result.p90, p95=result.p95, p99=result.p99,
        mean=result.mean, std=result.std, min=result.min, max=result.max,
        p50_ci_low=_low(result.ci95_p50), p50_ci_high=_high(result.ci95_p50),
        p99_ci_low=_low(result.ci95_p99), p99_ci_high=_high(result.ci95_p99),
        cold_start_ms=result.cold_start_ms, peak_mem_mb=result.peak_mem_mb, energy_mj=result.energy_mj_per_inference,
        accuracy_metric=provenance.accuracy_metric, accuracy=provenance.accuracy,
        accuracy_reference=provenance.accuracy_reference, accuracy_max_drop=provenance.accuracy_max_drop,
        source_sha256=provenance.source_sha256, bundle_sha256=provenance.bundle_sha256,
        artifact_sha256=provenance.artifact_sha256, toolchain=dict(provenance.toolchain),
        latencies_ms=latencies, bench=bench, created_at=_now(),
    )


def _low(interval: tuple[float, float] | None) -> float | None:
    return interval[0] if interval is not None else None


def _high(interval: tuple[float, float] | None) -> float | None:
    return interval[1] if interval is not None else None


def _pair(low: float | None, high: float | None) -> tuple[float, float] | None:
    return (low, high) if low is not None and high is not None else None


def _row(r: Result, started: datetime) -> ResultRow:
    return ResultRow(
        id=r.id, run_id=r.run_id, run_started_at=started, device=r.device_id, model=r.model, target=r.target,
        recipe=r.recipe, runner=r.runner, precision=r.precision, p50=r.p50, p90=r.p90, p99=r.p99,
        p50_ci=_pair(r.p50_ci_low, r.p50_ci_high), p99_ci=_pair(r.p99_ci_low, r.p99_ci_high),
        latencies_ms=tuple(r.latencies_ms or ()),
        cold_start_ms=r.cold_start_ms, peak_mem_mb=r.peak_mem_mb, energy_mj=r.energy_mj, accuracy_metric=r.accuracy_metric,
        accuracy=r.accuracy, accuracy_reference=r.accuracy_reference, accuracy_max_drop=r.accuracy_max_drop,
        bundle_sha256=r.bundle_sha256, artifact_sha256=r.artifact_sha256, toolchain=dict(r.toolchain or {}),
    )


@contextmanager
def open_store(url: str | None = None, *, create: bool = True) -> Iterator[Store]:
    """``with open_store(url) as store:`` — open, migrate, and dispose of the connections afterwards
    (``create=False``: for reading, refuse a SQLite file that does not exist)."""
    store = Store.open(url, create=create)
    try:
        yield store
    finally:
        store.close()


def record_bench_results(
    db: str | None, bundle: Path, results: Sequence[BenchResult], *, device: str | None = None,
    farm: str = "bench", recipe: str | None = None,
) -> int:
    """Store results of ``edgepack bench BUNDLE`` as a one-off run of ``farm``; returns the run id.

    ``device`` names the device (default: the result's runner URI). Model, target, recipe and the
    provenance (hashes, toolchain, gate accuracy) come from the bundle's manifest (a ``.zip`` bundle is
    read through :func:`edgepack.bundle.verify.open_bundle`).
    """
    from edgepack.bundle.verify import open_bundle

    bundle = Path(bundle)
    if bundle.is_file():
        with open_bundle(bundle) as opened:
            return _record_bench_results(db, opened.root, results, device=device, farm=farm, recipe=recipe,
                                         label=bundle)
    return _record_bench_results(db, bundle, results, device=device, farm=farm, recipe=recipe, label=bundle)


def _record_bench_results(
    db: str | None, bundle: Path, results: Sequence[BenchResult], *, device: str | None, farm: str,
    recipe: str | None, label: Path,
) -> int:
    from edgepack.bundle.writer import read_manifest

    if not results:
        raise InputError(f"{bundle}: no bench results to store")
    manifest = read_manifest(bundle)
    targets = manifest.get("targets") or {}
    specs: list[JobSpec] = []
    devices: dict[str, tuple[str, str, str]] = {}
    for position, result in enumerate(results):
        device_id = device or result.runner
        entry = targets.get(result.target) or {}
        devices[device_id] = (device_id, str((entry.get("profile") or {}).get("id", result.target)), result.runner)
        specs.append(JobSpec(device_id, str(manifest.get("name", bundle.stem)), str(manifest.get("source", {}).get("uri", "")),
                             result.target, recipe or str(entry.get("recipe") or ""), position))
    config = {"bundle": str(label.resolve()), "manifest_sha256": bundle_provenance(bundle, results[0].target).bundle_sha256}
    with open_store(db) as store:
        run_id = store.start_run(farm, config, "bench", list(devices.values()), specs)
        jobs = {job.spec.key: job for job in store.jobs(run_id)}
        for spec, result in zip(specs, results):
            job = jobs[spec.key]
            store.job_attempt(job.id)
            store.record_result(job.id, result, bundle_provenance(bundle, result.target))
        store.finish_run(run_id)
    return run_id
