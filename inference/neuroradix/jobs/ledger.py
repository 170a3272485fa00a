"""The job ledger: one row per (study, pipeline version), claimed with a lease.

SQLAlchemy Core on a SQLite file by default, or PostgreSQL (psycopg 3,
``NEURORADIX_LEDGER_URL=postgresql+psycopg://user@host/db``) when several workers on several hosts
share one ledger. A claim picks its row with ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite
has one writer at a time) and takes it with a compare-and-set ``UPDATE ... WHERE id = ? AND <still
claimable>``, so two workers never hold the same job; a worker that dies stops renewing its lease,
the lease expires and the job is claimed again.

The schema is managed by Alembic (``neuroradix/jobs/migrations``): opening a ledger upgrades it to
head under a lock, so several processes may start at once. Writes that fail for an operational
reason (database locked, disk full, connection lost) are retried a few times with a short backoff,
then raise :class:`LedgerUnavailableError`.

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``skipped`` (terminal), and
``running`` -> ``queued`` again for a transient error (with ``next_attempt_at`` backed off).

Two budgets end a job that keeps failing (migration 0004). Transient errors (the PACS down or
refusing the node's credentials) are retried for a time window counted from ``retrying_since``,
the first failure of the current run of them (:meth:`Ledger.retry_transient`; the worker decides
when the window is spent). Everything else that is retried -- an unexpected exception, a timed-out
job, a worker that died holding the lease -- counts against ``max_attempts``: the claims that ended
on a transient error (``transient_attempts``) are not counted.
"""

from __future__ import annotations

import builtins
import datetime as dt
import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, overload

import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from neuroradix.errors import LedgerUnavailableError

logger = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = "neuroradix.jobs:migrations"  # Alembic script location, resolved by importlib.resources
BASELINE_REVISION = "0001"  # the schema of the first release, which had no version table
VERSION_TABLE = "neuroradix_ledger_version"  # not alembic_version: the database may be shared
_MIGRATION_LOCK_KEY = 0x4E52_4C45  # PostgreSQL advisory lock held while the schema is upgraded
RETRYABLE_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError, OSError)
UPLOAD = "upload"  # Job.source of a study sent to POST /v1/analyze (the other source: "pacs")


class JobState(str, enum.Enum):
    """Where a job is: queued, running, or ended (succeeded, failed, skipped)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        """True for the states a job never leaves by itself (succeeded, failed, skipped)."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED)


metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("pipeline_version", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("trigger", sa.String(32), nullable=False, default="api"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False, default=5),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("error_class", sa.String(100)),
    sa.Column("error_message", sa.Text),
    sa.Column("timings", sa.Text, nullable=False, default="{}"),  # JSON {stage: seconds}
    sa.Column("input_series_uid", sa.String(64)),
    # What the study's source series looked like (see source_fingerprint): when the PACS reports a
    # different one for a finished job, the study changed (late slices) and the job runs again.
    sa.Column("source_fingerprint", sa.String(64)),
    sa.Column("pending_rerun", sa.Boolean, nullable=False, default=False),
    # Where the study comes from (migration 0003): "pacs" (the node's PACS) or "upload" (a zip of one
    # study at input_path, sent to POST /v1/analyze; the worker deletes it when the job ends).
    sa.Column("source", sa.String(16), nullable=False, default="pacs", server_default="pacs"),
    sa.Column("input_path", sa.Text),
    # Retry by time (migration 0004): when the current run of transient failures began (kept on a job
    # that gave up on one, which the reconciler queues again), and how many claims ended on one.
    sa.Column("retrying_since", sa.DateTime(timezone=True)),
    sa.Column("transient_attempts", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column(
        "output_uids", sa.Text, nullable=False, default="[]"
    ),  # JSON [{sop_instance_uid, series_instance_uid, kind}]
    sa.Column("details", sa.Text, nullable=False, default="{}"),  # JSON: warnings, findings summary
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("study_uid", "pipeline_version", name="uq_job_study_version"),
    sa.Index("ix_jobs_claim", "state", "next_attempt_at"),  # migration 0002
)


# Triage (migration 0005, see neuroradix.jobs.triage_store): each study's decision, the outbox of
# notifications and the append-only audit trail, in the same database so that a decision and its
# notifications are written in one transaction.
triage_studies = sa.Table(
    "triage_studies",
    metadata,
    sa.Column("study_uid", sa.String(64), primary_key=True),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("decision_seq", sa.Integer, nullable=False),
    sa.Column("decided_job_id", sa.Integer),
    sa.Column("decided_job_finished_at", sa.DateTime(timezone=True)),
    sa.Column("label_wanted", sa.String(32)),
    sa.Column("label_applied", sa.String(32)),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True)),
    sa.Column("labelled_at", sa.DateTime(timezone=True)),
    sa.Column("acknowledged_by", sa.String(100)),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
    sa.Column("escalated_at", sa.DateTime(timezone=True)),
    sa.Column("max_wait_notified_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_triage_studies_level", "level"),
)

triage_deliveries = sa.Table(
    "triage_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(64), nullable=False, unique=True),
    sa.Column("study_uid", sa.String(64), nullable=False, index=True),
    sa.Column("destination", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("last_detail", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Index("ix_triage_deliveries_due", "state", "next_attempt_at"),
)

triage_events = sa.Table(
    "triage_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_uid", sa.String(64), nullable=False, index=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC (what every ledger timestamp uses)."""
    return dt.datetime.now(dt.UTC)


@overload
def _aware(value: dt.datetime) -> dt.datetime: ...
@overload
def _aware(value: Optional[dt.datetime]) -> Optional[dt.datetime]: ...
def _aware(value: Optional[dt.datetime]) -> Optional[dt.datetime]:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@dataclass(frozen=True)
class Job:
    """One job row: a study to process for one pipeline version, its state and its record."""

    id: int
    study_uid: str
    pipeline_version: str
    state: JobState
    trigger: str
    attempts: int
    max_attempts: int
    lease_owner: Optional[str]
    lease_expires_at: Optional[dt.datetime]
    next_attempt_at: dt.datetime
    error_class: Optional[str]
    error_message: Optional[str]
    timings: dict
    input_series_uid: Optional[str]
    source_fingerprint: Optional[str]
    pending_rerun: bool
    output_uids: list
    details: dict
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: Optional[dt.datetime]
    finished_at: Optional[dt.datetime]
    source: str = "pacs"  # "pacs" or "upload"
    input_path: Optional[str] = None  # the uploaded zip of an "upload" job
    retrying_since: Optional[dt.datetime] = None  # first transient failure of the current run of them
    transient_attempts: int = 0  # claims that ended on a transient error (not counted in max_attempts)

    @property
    def counted_attempts(self) -> int:
        """Claims that count against ``max_attempts`` (all but those ended by a transient error)."""
        return self.attempts - self.transient_attempts

    @classmethod
    def from_row(cls, row: Any) -> Job:
        """Build a :class:`Job` from a SQLAlchemy result row of the ``jobs`` table."""
        m = row._mapping
        return cls(
            id=m["id"],
            study_uid=m["study_uid"],
            pipeline_version=m["pipeline_version"],
            state=JobState(m["state"]),
            trigger=m["trigger"],
            attempts=m["attempts"],
            max_attempts=m["max_attempts"],
            lease_owner=m["lease_owner"],
            lease_expires_at=_aware(m["lease_expires_at"]),
            next_attempt_at=_aware(m["next_attempt_at"]),
            error_class=m["error_class"],
            error_message=m["error_message"],
            timings=json.loads(m["timings"] or "{}"),
            input_series_uid=m["input_series_uid"],
            source_fingerprint=m["source_fingerprint"],
            pending_rerun=bool(m["pending_rerun"]),
            source=m["source"],
            input_path=m["input_path"],
            retrying_since=_aware(m["retrying_since"]),
            transient_attempts=m["transient_attempts"],
            output_uids=json.loads(m["output_uids"] or "[]"),
            details=json.loads(m["details"] or "{}"),
            created_at=_aware(m["created_at"]),
            updated_at=_aware(m["updated_at"]),
            started_at=_aware(m["started_at"]),
            finished_at=_aware(m["finished_at"]),
        )

    def to_dict(self) -> dict:
        """JSON-able view (state as its value, timestamps as ISO 8601)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["state"] = self.state.value
        for k, v in out.items():
            if isinstance(v, dt.datetime):
                out[k] = v.isoformat()
        return out


class LeaseLost(RuntimeError):
    """The worker's lease was taken over (it ran past the lease): its result is not recorded."""


def ledger_url(url: str) -> sa.URL:
    """Parse and check a ledger URL: SQLite on a file, or PostgreSQL through psycopg 3.

    Raises
    ------
    ValueError
        For another database, or an in-memory SQLite database (each connection would get its own).
    """
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"url: the ledger runs on SQLite or PostgreSQL, not {backend!r}")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError("url: an in-memory SQLite ledger is not shared between connections; name a file")
    return parsed


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def upgrade_schema(engine: Engine) -> None:
    """Upgrade the ledger's schema to the newest Alembic revision, safely from several processes.

    The whole upgrade runs in one transaction: on PostgreSQL under an advisory transaction lock,
    on SQLite under ``BEGIN IMMEDIATE`` (the database's write lock), so processes that start at
    once wait for the first and then find the schema current. A ledger made by the first release
    (a ``jobs`` table and no version table) is stamped as revision ``0001`` first, keeping its jobs.

    Parameters
    ----------
    engine
        The ledger's engine (SQLite or PostgreSQL).
    """
    if engine.dialect.name == "sqlite":
        # pysqlite starts transactions lazily and not for DDL: drive BEGIN IMMEDIATE ourselves.
        migrate = sa.create_engine(
            engine.url, poolclass=NullPool, connect_args={"timeout": 30, "isolation_level": None}
        )
        sa.event.listen(migrate, "connect", _sqlite_pragmas)
        sa.event.listen(migrate, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    else:
        migrate = engine
    try:
        with migrate.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            _upgrade_on(conn)
    finally:
        if migrate is not engine:
            migrate.dispose()


def _upgrade_on(conn: Connection) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = conn
    config.attributes["version_table"] = VERSION_TABLE
    inspector = sa.inspect(conn)
    if inspector.has_table("jobs") and not inspector.has_table(VERSION_TABLE):
        logger.info("ledger made by the first release: stamping schema revision %s", BASELINE_REVISION)
        alembic_command.stamp(config, BASELINE_REVISION)
    alembic_command.upgrade(config, "head")


class Ledger:
    """Job ledger on a SQLAlchemy engine.

    Parameters
    ----------
    url
        SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg://user:password@host:port/db``
        (a plain ``postgresql://`` URL gets the psycopg 3 driver).
    write_attempts
        How often a write is tried before :class:`LedgerUnavailableError` is raised.
    write_backoff_seconds
        Wait before the second try; doubled for each further one.
    """

    def __init__(self, url: str, *, write_attempts: int = 4, write_backoff_seconds: float = 0.05) -> None:
        if write_attempts < 1:
            raise ValueError(f"write_attempts must be at least 1, got {write_attempts}")
        if write_backoff_seconds < 0:
            raise ValueError(f"write_backoff_seconds must not be negative, got {write_backoff_seconds}")
        self.write_attempts = write_attempts
        self.write_backoff_seconds = write_backoff_seconds
        self.lease_takeovers = 0  # claims of a job whose lease had expired, by this object
        parsed = ledger_url(url)
        kwargs: dict = {}
        if parsed.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True  # a restarted PostgreSQL leaves dead pooled connections
        self.engine: Engine = sa.create_engine(parsed, **kwargs)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._write("schema upgrade", lambda: upgrade_schema(self.engine))  # a server still starting: retried

    def _write(self, what: str, operation: Callable[[], T]) -> T:
        """Run ``operation`` (one transaction), retrying operational errors with a doubling backoff."""
        for attempt in range(1, self.write_attempts + 1):
            try:
                return operation()
            except RETRYABLE_ERRORS as exc:
                # The DBAPI's own message: SQLAlchemy's text would carry the statement's parameters (UIDs).
                reason = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}".splitlines()[0][:200]
                if attempt == self.write_attempts:
                    raise LedgerUnavailableError(f"ledger {what} failed {attempt} times; last error {reason}") from exc
                delay = self.write_backoff_seconds * 2 ** (attempt - 1)
                logger.warning(
                    "ledger %s failed (%s); try %d of %d in %.2f s",
                    what,
                    reason,
                    attempt + 1,
                    self.write_attempts,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    # --- enqueue -----------------------------------------------------------------------------
    def enqueue(
        self,
        study_uid: str,
        pipeline_version: str,
        *,
        trigger: str = "api",
        rerun: bool = False,
        max_attempts: int = 5,
        fingerprint: Optional[str] = None,
        delay_seconds: float = 0.0,
        source: str = "pacs",
        input_path: Optional[str] = None,
    ) -> tuple[Job, bool]:
        """Create the job for (study, version) if it does not exist.

        Returns ``(job, created)``. An existing job is queued again (attempts reset) when it has
        ended and either ``rerun`` is asked for or ``fingerprint`` differs from the source the
        job saw (more slices arrived, a series was added). A running job given a different
        fingerprint runs again once it ends. A queued job is left to run. ``delay_seconds``
        holds a new job back (the reconciler lets a study it found settle first). ``source`` and
        ``input_path`` say where a new job's study comes from (``"upload"``: the zip at ``input_path``).
        """
        now = utcnow()
        key = (jobs.c.study_uid == study_uid, jobs.c.pipeline_version == pipeline_version)

        def _enqueue() -> Optional[tuple[Any, bool]]:
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(jobs).where(*key)).first()
                created = False
                if row is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(
                                jobs.insert().values(
                                    study_uid=study_uid,
                                    pipeline_version=pipeline_version,
                                    state=JobState.QUEUED.value,
                                    trigger=trigger,
                                    attempts=0,
                                    max_attempts=max_attempts,
                                    next_attempt_at=now + dt.timedelta(seconds=delay_seconds),
                                    source_fingerprint=fingerprint,
                                    pending_rerun=False,
                                    source=source,
                                    input_path=input_path,
                                    timings="{}",
                                    output_uids="[]",
                                    details="{}",
                                    created_at=now,
                                    updated_at=now,
                                )
                            )
                        created = True
                    except sa.exc.IntegrityError:  # a concurrent enqueue won the race
                        pass
                elif not self._request_rerun(conn, row, now, trigger, rerun, fingerprint):
                    return None  # the job changed state since it was read: read it again
                job = conn.execute(sa.select(jobs).where(*key)).one()
            return job, created

        for _ in range(20):
            outcome = self._write("enqueue", _enqueue)
            if outcome is not None:
                break
        else:
            raise LedgerUnavailableError("enqueue: the job kept changing state under 20 tries")
        job, created = outcome
        return Job.from_row(job), created

    def _request_rerun(
        self, conn: Connection, row: Any, now: dt.datetime, trigger: str, rerun: bool, fingerprint: Optional[str]
    ) -> bool:
        """Queue an ended job again, or mark a running one to rerun; False if its state moved meanwhile.

        Each update is a compare-and-set on the state that was read, so a job that ends between
        the read and the write is not marked ``pending_rerun`` after its end (where no one would
        look at the mark again): the caller reads it again instead.
        """
        m = row._mapping
        state = JobState(m["state"])
        changed = fingerprint is not None and fingerprint != m["source_fingerprint"]
        if not (rerun or changed) or state == JobState.QUEUED:
            return True
        if state.terminal:
            values = {
                **self._requeue_values(now),
                "trigger": trigger,
                "source_fingerprint": fingerprint if fingerprint is not None else m["source_fingerprint"],
            }
        else:
            values = {"pending_rerun": True, "updated_at": now}
        result = conn.execute(jobs.update().where(jobs.c.id == m["id"], jobs.c.state == state.value).values(**values))
        return result.rowcount == 1

    @staticmethod
    def _requeue_values(now: dt.datetime) -> dict:
        return {
            "state": JobState.QUEUED.value,
            "attempts": 0,
            "next_attempt_at": now,
            "error_class": None,
            "error_message": None,
            "lease_owner": None,
            "lease_expires_at": None,
            "pending_rerun": False,
            "updated_at": now,
            "finished_at": None,
            "retrying_since": None,
            "transient_attempts": 0,
        }

    # --- claim / lease -----------------------------------------------------------------------
    def _claimable(self, now: dt.datetime):
        return sa.or_(
            sa.and_(jobs.c.state == JobState.QUEUED.value, jobs.c.next_attempt_at <= now),
            sa.and_(jobs.c.state == JobState.RUNNING.value, jobs.c.lease_expires_at < now),
        )

    def claim(self, worker_id: str, lease_seconds: float) -> Optional[Job]:
        """Claim the oldest claimable job for ``worker_id``; None when there is none.

        Raises :class:`LedgerUnavailableError` when the database refuses the write repeatedly.
        """
        for _ in range(5):
            outcome = self._write("claim", lambda: self._claim_once(worker_id, lease_seconds))
            if outcome == "empty":
                return None
            if isinstance(outcome, Job):
                return outcome
        return None

    def _claim_once(self, worker_id: str, lease_seconds: float) -> Job | str:
        """One claim transaction: the claimed job, ``"empty"``, or ``"again"`` (lost a race / gave one up)."""
        now = utcnow()
        with self.engine.begin() as conn:
            # PostgreSQL locks the candidate row and lets concurrent claimers skip to the next one;
            # SQLite renders no FOR UPDATE (one writer at a time) and relies on the compare-and-set.
            candidate = conn.execute(
                sa.select(jobs.c.id, jobs.c.state, jobs.c.attempts, jobs.c.transient_attempts, jobs.c.max_attempts)
                .where(self._claimable(now))
                .order_by(jobs.c.next_attempt_at, jobs.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if candidate is None:
                return "empty"
            if candidate.state == JobState.RUNNING.value:
                logger.warning("job %d: lease expired (worker died?), claiming it again", candidate.id)
                self.lease_takeovers += 1  # read by jobs.metrics (neuroradix_lease_takeovers_total)
            counted = candidate.attempts - candidate.transient_attempts
            if counted >= candidate.max_attempts:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == candidate.id, self._claimable(now))
                    .values(
                        state=JobState.FAILED.value,
                        error_class="AttemptsExhausted",
                        error_message=f"gave up after {counted} attempts (last worker lost its lease)",
                        retrying_since=None,
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=now,
                        finished_at=now,
                    )
                )
                return "again"
            result = conn.execute(
                jobs.update()
                .where(jobs.c.id == candidate.id, self._claimable(now))
                .values(
                    state=JobState.RUNNING.value,
                    lease_owner=worker_id,
                    lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
                    attempts=jobs.c.attempts + 1,
                    started_at=now,
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                return "again"
            return Job.from_row(conn.execute(sa.select(jobs).where(jobs.c.id == candidate.id)).one())

    def renew(self, job_id: int, worker_id: str, lease_seconds: float) -> None:
        """Extend the lease; raises :class:`LeaseLost` if another worker holds the job now."""

        def _renew() -> int:
            now = utcnow()
            with self.engine.begin() as conn:
                return conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.lease_owner == worker_id, jobs.c.state == JobState.RUNNING.value)
                    .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds), updated_at=now)
                ).rowcount

        if self._write("renew", _renew) != 1:
            raise LeaseLost(f"job {job_id} is no longer held by {worker_id}")

    # --- finish ------------------------------------------------------------------------------
    def _finish(self, job_id: int, worker_id: str, values: dict) -> JobState:
        """Record the outcome and return the job's new state.

        A job whose study changed while it ran (``pending_rerun``) is queued again instead. The
        mark is read and cleared by the same compare-and-set ``UPDATE`` that records the outcome
        (a ``CASE`` on ``pending_rerun``), so a rerun asked for while the job finishes is never lost.
        """
        now = utcnow()
        values = {**values, "updated_at": now, "lease_owner": None, "lease_expires_at": None}
        requeue = self._requeue_values(now)
        assignments: dict[str, Any] = {}
        for name in {**values, **requeue}:
            column = jobs.c[name]
            otherwise = sa.literal(values[name], column.type) if name in values else column
            if name in requeue and not (name in values and values[name] == requeue[name]):
                assignments[name] = sa.case(
                    (jobs.c.pending_rerun, sa.literal(requeue[name], column.type)), else_=otherwise
                )
            else:
                assignments[name] = otherwise
        statement = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.lease_owner == worker_id, jobs.c.state == JobState.RUNNING.value)
            .values(**assignments)
            .returning(jobs.c.state)
        )

        def _record() -> Optional[str]:
            with self.engine.begin() as conn:
                row = conn.execute(statement).first()
                if row is not None:
                    return row.state
                # Not ours any more -- unless an earlier try of this very write committed before its
                # connection failed: then the row carries this write's timestamp and no lease.
                mine = conn.execute(
                    sa.select(jobs.c.state, jobs.c.updated_at, jobs.c.lease_owner).where(jobs.c.id == job_id)
                ).first()
                if mine is not None and mine.lease_owner is None and _aware(mine.updated_at) == now:
                    return mine.state
                return None

        state = self._write("finish", _record)
        if state is None:
            raise LeaseLost(f"job {job_id} is no longer held by {worker_id}")
        if state == JobState.QUEUED.value and values.get("state") != JobState.QUEUED.value:
            logger.info("job %d: the study changed while it ran; queued again", job_id)
        return JobState(state)

    def succeed(
        self,
        job_id: int,
        worker_id: str,
        *,
        input_series_uid: Optional[str],
        output_uids: list,
        timings: dict,
        details: dict,
        fingerprint: Optional[str] = None,
    ) -> None:
        """Record a job's success (outputs, timings, details) if ``worker_id`` still holds its lease.

        A rerun requested while the job ran is read and cleared in the same write: the job is queued
        again instead. Raises :class:`LeaseLost` when another worker took the job over.
        """
        self._finish(
            job_id,
            worker_id,
            {
                **({"source_fingerprint": fingerprint} if fingerprint is not None else {}),
                "state": JobState.SUCCEEDED.value,
                "input_series_uid": input_series_uid,
                "output_uids": json.dumps(output_uids),
                "timings": json.dumps(timings),
                "details": json.dumps(details),
                "error_class": None,
                "error_message": None,
                "finished_at": utcnow(),
                "retrying_since": None,
            },
        )

    def fail(
        self,
        job_id: int,
        worker_id: str,
        error_class: str,
        message: str,
        *,
        timings: Optional[dict] = None,
        skipped: bool = False,
        input_series_uid: Optional[str] = None,
        fingerprint: Optional[str] = None,
        retrying_since: Optional[dt.datetime] = None,
    ) -> None:
        """End a job as failed (or skipped) with the error class and a reason a person can act on.

        Like :meth:`succeed`, a pending rerun turns this into "queued again" in the same write.
        ``retrying_since`` is given when the job gives up on a transient error whose retry window is
        spent: it marks the job for the reconciler (:meth:`gave_up_transient`).
        """
        self._finish(
            job_id,
            worker_id,
            {
                **({"source_fingerprint": fingerprint} if fingerprint is not None else {}),
                "state": (JobState.SKIPPED if skipped else JobState.FAILED).value,
                "error_class": error_class,
                "error_message": message[:2000],
                "timings": json.dumps(timings or {}),
                "input_series_uid": input_series_uid,
                "finished_at": utcnow(),
                "retrying_since": retrying_since,
            },
        )

    def retry_later(
        self, job_id: int, worker_id: str, error_class: str, message: str, delay_seconds: float
    ) -> JobState:
        """Put the job back in the queue after ``delay_seconds``, or fail it when attempts are used up.

        For the count-limited failures (an unexpected exception, a timed-out job): only the claims
        that did not end on a transient error count against ``max_attempts``. Returns the job's new
        state (``queued`` also when the study changed while the job ran).
        """
        row = self._attempts(job_id)
        counted = row.attempts - row.transient_attempts
        if counted >= row.max_attempts:
            return self._finish(
                job_id,
                worker_id,
                {
                    "state": JobState.FAILED.value,
                    "error_class": error_class,
                    "error_message": f"gave up after {counted} attempts: {message}"[:2000],
                    "finished_at": utcnow(),
                    "retrying_since": None,
                },
            )
        return self._finish(
            job_id,
            worker_id,
            {
                "state": JobState.QUEUED.value,
                "error_class": error_class,
                "error_message": message[:2000],
                "next_attempt_at": utcnow() + dt.timedelta(seconds=delay_seconds),
            },
        )

    def retry_transient(
        self,
        job_id: int,
        worker_id: str,
        error_class: str,
        message: str,
        delay_seconds: float,
        retrying_since: dt.datetime,
    ) -> JobState:
        """Queue the job again after a transient error, without counting the claim against ``max_attempts``.

        ``retrying_since`` is the first transient failure of the current run of them (the worker
        gives up once it is older than the retry window, see :mod:`neuroradix.jobs.retry`). Returns
        the job's new state.
        """
        row = self._attempts(job_id)
        return self._finish(
            job_id,
            worker_id,
            {
                "state": JobState.QUEUED.value,
                "error_class": error_class,
                "error_message": message[:2000],
                "next_attempt_at": utcnow() + dt.timedelta(seconds=delay_seconds),
                "retrying_since": retrying_since,
                "transient_attempts": row.transient_attempts + 1,
            },
        )

    def _attempts(self, job_id: int) -> Any:
        """The job's attempt counters (stable while the caller holds its lease)."""

        def _read() -> Any:
            with self.engine.connect() as conn:
                return conn.execute(
                    sa.select(jobs.c.attempts, jobs.c.transient_attempts, jobs.c.max_attempts).where(
                        jobs.c.id == job_id
                    )
                ).one()

        return self._write("read attempts", _read)

    # --- queries -----------------------------------------------------------------------------
    def get(self, job_id: int) -> Optional[Job]:
        """The job with id ``job_id``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return Job.from_row(row) if row is not None else None

    def find(self, study_uid: str, pipeline_version: Optional[str] = None) -> list[Job]:
        """A study's jobs (of one pipeline version when given), newest first."""
        query = sa.select(jobs).where(jobs.c.study_uid == study_uid)
        if pipeline_version is not None:
            query = query.where(jobs.c.pipeline_version == pipeline_version)
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query.order_by(jobs.c.id.desc()))]

    def list(self, *, state: Optional[JobState] = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """Jobs, newest first, optionally of one state, paged by ``limit``/``offset``."""
        query = sa.select(jobs)
        if state is not None:
            query = query.where(jobs.c.state == state.value)
        query = query.order_by(jobs.c.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def known_studies(self, pipeline_version: str) -> set[str]:
        """Study UIDs that have a job for ``pipeline_version`` (what the reconciler skips)."""
        with self.engine.connect() as conn:
            return {
                r.study_uid
                for r in conn.execute(sa.select(jobs.c.study_uid).where(jobs.c.pipeline_version == pipeline_version))
            }

    def gave_up_transient(self, pipeline_version: str, limit: int = 100) -> builtins.list[Job]:
        """PACS jobs of ``pipeline_version`` that failed because a transient error outlasted the retry window.

        Oldest first; what the reconciler queues again once the PACS answers.
        """
        query = (
            sa.select(jobs)
            .where(
                jobs.c.pipeline_version == pipeline_version,
                jobs.c.state == JobState.FAILED.value,
                jobs.c.retrying_since.is_not(None),
                jobs.c.source == "pacs",
            )
            .order_by(jobs.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def succeeded_after(self, pipeline_version: str, after_id: int, limit: int) -> builtins.list[Job]:
        """Succeeded PACS jobs of ``pipeline_version`` with an id above ``after_id``, by id (a cursor's page)."""
        query = (
            sa.select(jobs)
            .where(
                jobs.c.pipeline_version == pipeline_version,
                jobs.c.state == JobState.SUCCEEDED.value,
                jobs.c.source == "pacs",
                jobs.c.id > after_id,
            )
            .order_by(jobs.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def counts(self) -> dict[str, int]:
        """Number of jobs by state."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.state, sa.func.count(jobs.c.id)).group_by(jobs.c.state))
            return {row.state: row[1] for row in rows}
