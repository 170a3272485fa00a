"""The job ledger: one row per (study, pipeline version), claimed with a lease.

SQLAlchemy Core on a SQLite file by default; the statements are plain enough for PostgreSQL
(``NEURORADIX_LEDGER_URL=postgresql+psycopg://...``) when several workers on several hosts share
one ledger. A claim is a compare-and-set ``UPDATE ... WHERE id = ? AND <still claimable>``, so two
workers never hold the same job; a worker that dies stops renewing its lease, the lease expires
and the job is claimed again.

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``skipped`` (terminal), and
``running`` -> ``queued`` again for a transient error (with ``next_attempt_at`` backed off).
"""
from __future__ import annotations

import datetime as dt
import enum
import json
import logging
from dataclasses import dataclass
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Engine

LOG = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
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
    sa.Column("output_uids", sa.Text, nullable=False, default="[]"),  # JSON [{sop_instance_uid, series_instance_uid, kind}]
    sa.Column("details", sa.Text, nullable=False, default="{}"),  # JSON: warnings, findings summary
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("study_uid", "pipeline_version", name="uq_job_study_version"),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: Optional[dt.datetime]) -> Optional[dt.datetime]:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@dataclass(frozen=True)
class Job:
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

    @classmethod
    def from_row(cls, row: Any) -> Job:
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
            output_uids=json.loads(m["output_uids"] or "[]"),
            details=json.loads(m["details"] or "{}"),
            created_at=_aware(m["created_at"]),
            updated_at=_aware(m["updated_at"]),
            started_at=_aware(m["started_at"]),
            finished_at=_aware(m["finished_at"]),
        )

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["state"] = self.state.value
        for k, v in out.items():
            if isinstance(v, dt.datetime):
                out[k] = v.isoformat()
        return out


class LeaseLost(RuntimeError):
    """The worker's lease was taken over (it ran past the lease): its result is not recorded."""


class Ledger:
    """Job ledger on a SQLAlchemy engine."""

    def __init__(self, url: str) -> None:
        kwargs: dict = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = sa.create_engine(url, future=True, **kwargs)
        if url.startswith("sqlite"):
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _record):  # noqa: ANN001
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()
        metadata.create_all(self.engine)

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
    ) -> tuple[Job, bool]:
        """Create the job for (study, version) if it does not exist.

        Returns ``(job, created)``. An existing job is queued again (attempts reset) when it has
        ended and either ``rerun`` is asked for or ``fingerprint`` differs from the source the
        job saw (more slices arrived, a series was added). A running job given a different
        fingerprint runs again once it ends. A queued job is left to run. ``delay_seconds``
        holds a new job back (the reconciler lets a study it found settle first).
        """
        now = utcnow()
        key = (jobs.c.study_uid == study_uid, jobs.c.pipeline_version == pipeline_version)
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
            else:
                m = row._mapping
                state = JobState(m["state"])
                changed = fingerprint is not None and fingerprint != m["source_fingerprint"]
                if state.terminal and (rerun or changed):
                    conn.execute(jobs.update().where(jobs.c.id == m["id"]).values(
                        **self._requeue_values(now), trigger=trigger,
                        source_fingerprint=fingerprint if fingerprint is not None else m["source_fingerprint"]))
                elif state == JobState.RUNNING and (rerun or changed):
                    conn.execute(jobs.update().where(jobs.c.id == m["id"]).values(pending_rerun=True, updated_at=now))
            job = conn.execute(sa.select(jobs).where(*key)).one()
        return Job.from_row(job), created

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
        }

    # --- claim / lease -----------------------------------------------------------------------
    def _claimable(self, now: dt.datetime):
        return sa.or_(
            sa.and_(jobs.c.state == JobState.QUEUED.value, jobs.c.next_attempt_at <= now),
            sa.and_(jobs.c.state == JobState.RUNNING.value, jobs.c.lease_expires_at < now),
        )

    def claim(self, worker_id: str, lease_seconds: float) -> Optional[Job]:
        """Claim the oldest claimable job for ``worker_id``; None when there is none."""
        for _ in range(5):
            now = utcnow()
            with self.engine.begin() as conn:
                candidate = conn.execute(
                    sa.select(jobs.c.id, jobs.c.state, jobs.c.attempts, jobs.c.max_attempts)
                    .where(self._claimable(now))
                    .order_by(jobs.c.next_attempt_at, jobs.c.id)
                    .limit(1)
                ).first()
                if candidate is None:
                    return None
                if candidate.state == JobState.RUNNING.value:
                    LOG.warning("job %d: lease expired (worker died?), claiming it again", candidate.id)
                if candidate.attempts >= candidate.max_attempts:
                    conn.execute(
                        jobs.update()
                        .where(jobs.c.id == candidate.id, self._claimable(now))
                        .values(
                            state=JobState.FAILED.value,
                            error_class="AttemptsExhausted",
                            error_message=f"gave up after {candidate.attempts} attempts (last worker lost its lease)",
                            lease_owner=None,
                            lease_expires_at=None,
                            updated_at=now,
                            finished_at=now,
                        )
                    )
                    continue
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
                if result.rowcount == 1:
                    row = conn.execute(sa.select(jobs).where(jobs.c.id == candidate.id)).one()
                    return Job.from_row(row)
        return None

    def renew(self, job_id: int, worker_id: str, lease_seconds: float) -> None:
        """Extend the lease; raises :class:`LeaseLost` if another worker holds the job now."""
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.lease_owner == worker_id, jobs.c.state == JobState.RUNNING.value)
                .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds), updated_at=now)
            )
        if result.rowcount != 1:
            raise LeaseLost(f"job {job_id} is no longer held by {worker_id}")

    # --- finish ------------------------------------------------------------------------------
    def _finish(self, job_id: int, worker_id: str, values: dict) -> None:
        """Record the outcome; a job whose study changed while it ran is queued again instead."""
        now = utcnow()
        values = {**values, "updated_at": now, "lease_owner": None, "lease_expires_at": None}
        with self.engine.begin() as conn:
            pending = conn.execute(sa.select(jobs.c.pending_rerun).where(jobs.c.id == job_id)).scalar()
            if pending and JobState(values.get("state", JobState.QUEUED.value)).terminal:
                LOG.info("job %d: the study changed while it ran; queued again", job_id)
                values = {**values, **self._requeue_values(now)}
            result = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.lease_owner == worker_id, jobs.c.state == JobState.RUNNING.value)
                .values(**values)
            )
        if result.rowcount != 1:
            raise LeaseLost(f"job {job_id} is no longer held by {worker_id}")

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
            },
        )

    def fail(self, job_id: int, worker_id: str, error_class: str, message: str, *, timings: Optional[dict] = None,
             skipped: bool = False, input_series_uid: Optional[str] = None, fingerprint: Optional[str] = None) -> None:
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
            },
        )

    def retry_later(self, job_id: int, worker_id: str, error_class: str, message: str, delay_seconds: float) -> JobState:
        """Put the job back in the queue after ``delay_seconds``, or fail it when attempts are used up."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(jobs.c.attempts, jobs.c.max_attempts).where(jobs.c.id == job_id)).one()
        if row.attempts >= row.max_attempts:
            self._finish(
                job_id,
                worker_id,
                {
                    "state": JobState.FAILED.value,
                    "error_class": error_class,
                    "error_message": f"gave up after {row.attempts} attempts: {message}"[:2000],
                    "finished_at": utcnow(),
                },
            )
            return JobState.FAILED
        self._finish(
            job_id,
            worker_id,
            {
                "state": JobState.QUEUED.value,
                "error_class": error_class,
                "error_message": message[:2000],
                "next_attempt_at": utcnow() + dt.timedelta(seconds=delay_seconds),
            },
        )
        return JobState.QUEUED

    # --- queries -----------------------------------------------------------------------------
    def get(self, job_id: int) -> Optional[Job]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return Job.from_row(row) if row is not None else None

    def find(self, study_uid: str, pipeline_version: Optional[str] = None) -> list[Job]:
        query = sa.select(jobs).where(jobs.c.study_uid == study_uid)
        if pipeline_version is not None:
            query = query.where(jobs.c.pipeline_version == pipeline_version)
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query.order_by(jobs.c.id.desc()))]

    def list(self, *, state: Optional[JobState] = None, limit: int = 100, offset: int = 0) -> list[Job]:
        query = sa.select(jobs)
        if state is not None:
            query = query.where(jobs.c.state == state.value)
        query = query.order_by(jobs.c.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def known_studies(self, pipeline_version: str) -> set[str]:
        with self.engine.connect() as conn:
            return {
                r.study_uid
                for r in conn.execute(sa.select(jobs.c.study_uid).where(jobs.c.pipeline_version == pipeline_version))
            }

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state))
            return {state: n for state, n in rows}
