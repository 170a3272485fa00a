"""The job ledger's state machine: idempotent enqueue, exclusive claims, leases, retries; its schema
migrations; its behaviour when the database fails. Every test that takes ``ledger`` or ``ledger_url``
runs on SQLite and on a real PostgreSQL cluster (tests/jobs/conftest.py)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from neuroradix.errors import LedgerUnavailableError, TransientError
from neuroradix.jobs.ledger import (
    MIGRATIONS,
    VERSION_TABLE,
    JobState,
    LeaseLost,
    Ledger,
    ledger_url,
    metadata,
)


def test_enqueue_is_idempotent_per_study_and_version(ledger):
    job, created = ledger.enqueue("1.2.3", "v1")
    again, created_again = ledger.enqueue("1.2.3", "v1")
    other, created_other = ledger.enqueue("1.2.3", "v2")
    assert created and not created_again and created_other
    assert again.id == job.id != other.id
    assert job.state == JobState.QUEUED


def test_claim_is_exclusive_under_concurrency(ledger):
    for i in range(20):
        ledger.enqueue(f"1.2.{i}", "v1")
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := ledger.claim(name, 60)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 20


def test_expired_lease_is_claimed_again(ledger):
    ledger.enqueue("1.2.3", "v1")
    first = ledger.claim("dead-worker", lease_seconds=0.2)
    assert first is not None and ledger.claim("w2", 60) is None  # held
    time.sleep(0.3)
    second = ledger.claim("w2", 60)
    assert second is not None and second.id == first.id and second.attempts == 2 and second.lease_owner == "w2"
    with pytest.raises(LeaseLost):  # the dead worker's late result is refused
        ledger.succeed(first.id, "dead-worker", input_series_uid=None, output_uids=[], timings={}, details={})
    ledger.succeed(
        second.id,
        "w2",
        input_series_uid="1.2.4",
        output_uids=[{"sop_instance_uid": "1.2.5"}],
        timings={"fetch": 1.0},
        details={},
    )
    done = ledger.get(second.id)
    assert done.state == JobState.SUCCEEDED and done.output_uids == [{"sop_instance_uid": "1.2.5"}]
    assert done.timings == {"fetch": 1.0} and done.lease_owner is None


def test_renew_keeps_the_job(ledger):
    ledger.enqueue("1.2.3", "v1")
    job = ledger.claim("w1", lease_seconds=0.3)
    for _ in range(3):
        time.sleep(0.15)
        ledger.renew(job.id, "w1", 0.3)
    assert ledger.claim("w2", 60) is None


def test_transient_retry_backs_off_then_gives_up(ledger):
    ledger.enqueue("1.2.3", "v1", max_attempts=2)
    job = ledger.claim("w1", 60)
    assert ledger.retry_later(job.id, "w1", "TransientError", "PACS down", delay_seconds=0.2) == JobState.QUEUED
    assert ledger.claim("w1", 60) is None  # not before the backoff
    time.sleep(0.25)
    job = ledger.claim("w1", 60)
    assert job.attempts == 2 and job.error_message == "PACS down"
    assert ledger.retry_later(job.id, "w1", "TransientError", "PACS down", 0) == JobState.FAILED
    failed = ledger.get(job.id)
    assert failed.state == JobState.FAILED and "gave up after 2 attempts" in failed.error_message


def test_transient_retries_are_not_counted_against_max_attempts(ledger):
    """Retry by time: a job that met only transient errors is claimed again however often it failed."""
    ledger.enqueue("1.2.3", "v1", max_attempts=2)
    since = None
    for n in range(1, 6):
        job = ledger.claim("w1", 60)
        assert job is not None and job.attempts == n and job.counted_attempts == 1
        since = since or job.updated_at
        state = ledger.retry_transient(job.id, "w1", "TransientError", "PACS down", 0, retrying_since=since)
        assert state == JobState.QUEUED
    again = ledger.get(job.id)
    assert again.transient_attempts == 5 and again.retrying_since == since
    # a bug now counts: with one counted attempt left the job is retried once more, then fails
    job = ledger.claim("w1", 60)
    assert ledger.retry_later(job.id, "w1", "KeyError", "internal error", 0) == JobState.QUEUED
    job = ledger.claim("w1", 60)
    assert job.counted_attempts == 2
    assert ledger.retry_later(job.id, "w1", "KeyError", "internal error", 0) == JobState.FAILED
    failed = ledger.get(job.id)
    assert "gave up after 2 attempts" in failed.error_message and failed.retrying_since is None


def test_a_job_that_gave_up_on_a_transient_error_is_found_and_a_rerun_resets_it(ledger):
    ledger.enqueue("1.2.3", "v1")
    a = ledger.claim("w1", 60)
    since = a.updated_at
    ledger.retry_transient(a.id, "w1", "TransientError", "PACS down", 0, retrying_since=since)
    a = ledger.claim("w1", 60)
    ledger.fail(a.id, "w1", "TransientError", "gave up after 24 h: PACS down", retrying_since=since)
    ledger.enqueue("1.2.4", "v1")
    ledger.enqueue("1.2.5", "v1", source="upload", input_path="/x.zip")
    b = ledger.claim("w1", 60)
    ledger.fail(b.id, "w1", "BadInputError", "missing slices")  # not transient: not for the reconciler
    c = ledger.claim("w1", 60)
    ledger.fail(c.id, "w1", "TransientError", "gave up", retrying_since=since)  # an upload: no PACS to wait for
    assert [j.study_uid for j in ledger.gave_up_transient("v1")] == ["1.2.3"]
    assert ledger.gave_up_transient("v2") == []
    again, _ = ledger.enqueue("1.2.3", "v1", rerun=True, trigger="reconciler")
    assert again.state == JobState.QUEUED and again.retrying_since is None and again.transient_attempts == 0
    assert ledger.gave_up_transient("v1") == []


def test_succeeded_after_pages_by_id(ledger):
    for i in range(4):
        ledger.enqueue(f"1.2.{i}", "v1")
    for _ in range(4):
        job = ledger.claim("w1", 60)
        if job.study_uid == "1.2.2":
            ledger.fail(job.id, "w1", "BadInputError", "x")
        else:
            ledger.succeed(job.id, "w1", input_series_uid=None, output_uids=[], timings={}, details={})
    first = ledger.succeeded_after("v1", 0, 2)
    assert [j.study_uid for j in first] == ["1.2.0", "1.2.1"]
    assert [j.study_uid for j in ledger.succeeded_after("v1", first[-1].id, 2)] == ["1.2.3"]
    assert ledger.succeeded_after("v1", 10**6, 2) == []


def test_bad_input_fails_at_once_and_skip_is_terminal(ledger):
    ledger.enqueue("1.2.3", "v1")
    ledger.enqueue("1.2.4", "v1")
    a = ledger.claim("w1", 60)
    ledger.fail(a.id, "w1", "BadInputError", "missing slices")
    b = ledger.claim("w1", 60)
    ledger.fail(b.id, "w1", "NotEligibleError", "no CT series", skipped=True)
    assert ledger.get(a.id).state == JobState.FAILED and ledger.get(a.id).error_message == "missing slices"
    assert ledger.get(b.id).state == JobState.SKIPPED
    assert ledger.claim("w1", 60) is None
    assert ledger.counts() == {"failed": 1, "skipped": 1}


def test_rerun_requeues_only_terminal_jobs(ledger):
    _job, _ = ledger.enqueue("1.2.3", "v1")
    running = ledger.claim("w1", 60)
    again, _ = ledger.enqueue("1.2.3", "v1", rerun=True)
    assert again.state == JobState.RUNNING  # a running job is left alone
    ledger.fail(running.id, "w1", "BadInputError", "missing slices")
    again, created = ledger.enqueue("1.2.3", "v1", rerun=True, trigger="stable-study")
    assert not created and again.state == JobState.QUEUED and again.attempts == 0 and again.error_message is None


def test_dead_worker_with_no_attempts_left_fails_with_reason(ledger):
    ledger.enqueue("1.2.3", "v1", max_attempts=1)
    ledger.claim("dead", lease_seconds=0.1)
    time.sleep(0.2)
    assert ledger.claim("w2", 60) is None
    job = ledger.find("1.2.3")[0]
    assert job.state == JobState.FAILED and job.error_class == "AttemptsExhausted"


def test_changed_source_requeues_a_finished_job_and_same_source_does_not(ledger):
    ledger.enqueue("1.2.3", "v1", fingerprint="aaaa1111")
    job = ledger.claim("w1", 60)
    ledger.fail(job.id, "w1", "BadInputError", "no lungs found (partial study)", fingerprint="aaaa1111")
    same, _ = ledger.enqueue("1.2.3", "v1", fingerprint="aaaa1111", trigger="stable-study")
    assert same.state == JobState.FAILED  # nothing new: stays failed
    changed, created = ledger.enqueue("1.2.3", "v1", fingerprint="bbbb2222", trigger="stable-study")
    assert not created and changed.state == JobState.QUEUED and changed.attempts == 0
    assert changed.source_fingerprint == "bbbb2222" and changed.error_message is None


def test_source_change_while_running_reruns_after_the_run(ledger):
    ledger.enqueue("1.2.3", "v1", trigger="reconciler")
    job = ledger.claim("w1", 60)
    during, _ = ledger.enqueue("1.2.3", "v1", fingerprint="cccc3333", trigger="stable-study")
    assert during.state == JobState.RUNNING and during.pending_rerun
    ledger.succeed(job.id, "w1", input_series_uid="1.2", output_uids=[], timings={}, details={}, fingerprint="dddd4444")
    after = ledger.get(job.id)
    assert after.state == JobState.QUEUED and not after.pending_rerun and after.attempts == 0
    again = ledger.claim("w1", 60)
    ledger.succeed(
        again.id, "w1", input_series_uid="1.2", output_uids=[], timings={}, details={}, fingerprint="cccc3333"
    )
    assert ledger.get(job.id).state == JobState.SUCCEEDED and ledger.get(job.id).source_fingerprint == "cccc3333"


# --- a rerun asked for while the job finishes --------------------------------------------------
def _on_first_update(ledger: Ledger, action: Callable[[], None]) -> None:
    """Run ``action`` (once) just before ``ledger`` sends its next UPDATE to the database."""
    fired = []

    def hook(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("UPDATE") and not fired:
            fired.append(statement)
            action()

    sa.event.listen(ledger.engine, "before_cursor_execute", hook)


@pytest.mark.parametrize("finish", ["succeed", "fail", "retry_later"])
def test_rerun_requested_while_the_job_finishes_is_not_lost(ledger, ledger_url, finish):
    ledger.enqueue("1.2.3", "v1", fingerprint="aaaa1111")
    job = ledger.claim("w1", 60)
    other = Ledger(ledger_url)  # the API or the reconciler, in another process

    def late_slices_arrive() -> None:
        during, _ = other.enqueue("1.2.3", "v1", fingerprint="bbbb2222", trigger="stable-study")
        assert during.state == JobState.RUNNING and during.pending_rerun

    _on_first_update(ledger, late_slices_arrive)  # between the outcome's read and its write, if any
    if finish == "succeed":
        ledger.succeed(job.id, "w1", input_series_uid="1.2", output_uids=[], timings={}, details={})
    elif finish == "fail":
        ledger.fail(job.id, "w1", "BadInputError", "no lungs found (partial study)")
    else:
        assert ledger.retry_later(job.id, "w1", "TransientError", "PACS down", delay_seconds=600) == JobState.QUEUED
    after = ledger.get(job.id)
    assert after.state == JobState.QUEUED and not after.pending_rerun and after.attempts == 0
    assert after.next_attempt_at <= after.updated_at  # not held back by the retry's backoff
    assert ledger.claim("w2", 60).id == job.id
    other.engine.dispose()


def test_rerun_requested_while_a_job_ends_is_never_marked_on_the_ended_job(ledger, ledger_url):
    """enqueue reads RUNNING, the job ends before enqueue writes: the mark must not land on a terminal job."""
    ledger.enqueue("1.2.3", "v1")
    job = ledger.claim("w1", 60)
    finisher = Ledger(ledger_url)
    _on_first_update(
        ledger, lambda: finisher.succeed(job.id, "w1", input_series_uid=None, output_uids=[], timings={}, details={})
    )
    again, created = ledger.enqueue("1.2.3", "v1", rerun=True)
    assert not created and again.state == JobState.QUEUED and not again.pending_rerun
    finisher.engine.dispose()


# --- the database fails while the ledger writes ---------------------------------------------------
def _failing(kind: str) -> BaseException:
    if kind == "oserror":
        return OSError(errno.ENOSPC, "No space left on device")
    return sa.exc.OperationalError("UPDATE jobs", {}, sqlite3.OperationalError("database or disk is full"))


def _inject_write_failures(ledger: Ledger, kind: str, times: int) -> tuple[list[str], Callable[[], None]]:
    """Make the next ``times`` INSERT/UPDATE statements fail as a full disk does; returns (failed, stop)."""
    failed: list[str] = []

    def hook(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith(("UPDATE", "INSERT")) and len(failed) < times:
            failed.append(statement)
            raise _failing(kind)

    sa.event.listen(ledger.engine, "before_cursor_execute", hook)
    return failed, lambda: sa.event.remove(ledger.engine, "before_cursor_execute", hook)


@pytest.mark.parametrize("kind", ["oserror", "operational"])
def test_write_errors_are_retried_with_backoff(ledger_url, kind):
    ledger = Ledger(ledger_url, write_attempts=4, write_backoff_seconds=0.05)
    ledger.enqueue("1.2.3", "v1")
    job = ledger.claim("w1", 60)
    failed, _stop = _inject_write_failures(ledger, kind, times=2)
    started = time.monotonic()
    ledger.succeed(
        job.id, "w1", input_series_uid="1.2", output_uids=[{"sop_instance_uid": "1.2.9"}], timings={}, details={}
    )
    assert len(failed) == 2 and time.monotonic() - started >= 0.05 + 0.10
    done = ledger.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.output_uids == [{"sop_instance_uid": "1.2.9"}]
    ledger.engine.dispose()


@pytest.mark.parametrize("kind", ["oserror", "operational"])
def test_lasting_write_errors_surface_as_a_typed_transient_error(ledger_url, kind, caplog):
    ledger = Ledger(ledger_url, write_attempts=3, write_backoff_seconds=0.01)
    ledger.enqueue("1.2.840.777.1", "v1")
    ledger.enqueue("1.2.840.777.2", "v1")
    job = ledger.claim("w1", 60)
    failed, stop = _inject_write_failures(ledger, kind, times=10**6)
    with pytest.raises(LedgerUnavailableError) as raised:
        ledger.succeed(job.id, "w1", input_series_uid=None, output_uids=[], timings={}, details={})
    assert isinstance(raised.value, TransientError) and "finish failed 3 times" in str(raised.value)
    assert len(failed) == 3
    with pytest.raises(LedgerUnavailableError):
        ledger.enqueue("1.2.840.777.3", "v1")
    with pytest.raises(LedgerUnavailableError):
        ledger.claim("w2", 60)  # the queued 1.2.840.777.2
    assert "1.2.840.777" not in caplog.text + str(raised.value)  # never a study UID in logs or messages
    stop()
    kept = ledger.get(job.id)  # nothing was recorded: the job stays with its worker until the lease ends
    assert kept.state == JobState.RUNNING and kept.lease_owner == "w1"
    assert [(j.study_uid, j.state) for j in ledger.list()] == [
        ("1.2.840.777.2", JobState.QUEUED),
        ("1.2.840.777.1", JobState.RUNNING),
    ]
    ledger.engine.dispose()


def test_ledger_urls_are_checked_and_plain_postgresql_gets_psycopg(postgres_cluster):
    assert ledger_url("postgresql://u:p@db:5432/jobs").drivername == "postgresql+psycopg"
    assert ledger_url("sqlite:///var/ledger.sqlite").database == "var/ledger.sqlite"
    for wrong, reason in [("sqlite://", "in-memory"), ("sqlite:///:memory:", "in-memory"), ("mysql://db/x", "mysql")]:
        with pytest.raises(ValueError, match=reason):
            Ledger(wrong)
    plain = postgres_cluster.create_database().replace("postgresql+psycopg://", "postgresql://")
    ledger = Ledger(plain)
    assert ledger.engine.dialect.driver == "psycopg" and ledger.enqueue("1.2.3", "v1")[1]
    ledger.engine.dispose()


def test_unreachable_database_at_start_is_a_typed_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(LedgerUnavailableError, match="schema upgrade failed 2 times"):
        Ledger(f"postgresql+psycopg://postgres@127.0.0.1:{port}/ledger", write_attempts=2, write_backoff_seconds=0.1)
    assert time.monotonic() - started >= 0.1


def test_invalid_retry_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="write_attempts"):
        Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}", write_attempts=0)
    with pytest.raises(ValueError, match="write_backoff_seconds"):
        Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}", write_backoff_seconds=-1)


# --- schema migrations ------------------------------------------------------------------------
def _head_revision() -> str:
    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS)
    return ScriptDirectory.from_config(config).get_current_head()


def _revision(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))]


def _schema_diff(conn: sa.Connection) -> list:
    """What autogenerate would change to make the database match ``ledger.metadata``."""
    return compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), metadata)


def test_new_ledger_is_at_head_and_matches_the_table_definition(ledger):
    assert _revision(ledger.engine) == [_head_revision()]
    with ledger.engine.connect() as conn:
        diff = _schema_diff(conn)
    # A column added to ledger.jobs without a migration (or the reverse) shows up here.
    assert diff == []


def test_reopening_a_ledger_keeps_it_at_head(ledger, ledger_url):
    ledger.enqueue("1.2.3", "v1")
    again = Ledger(ledger_url)
    assert _revision(again.engine) == [_head_revision()] and len(again.list()) == 1
    again.engine.dispose()


# The schema the first release (commit 026e9dd) created with metadata.create_all, as SQLite stored it.
FIRST_RELEASE_DDL = [
    """CREATE TABLE jobs (
        id INTEGER NOT NULL, study_uid VARCHAR(64) NOT NULL, pipeline_version VARCHAR(200) NOT NULL,
        state VARCHAR(16) NOT NULL, "trigger" VARCHAR(32) NOT NULL, attempts INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL, lease_owner VARCHAR(100), lease_expires_at DATETIME,
        next_attempt_at DATETIME NOT NULL, error_class VARCHAR(100), error_message TEXT, timings TEXT NOT NULL,
        input_series_uid VARCHAR(64), source_fingerprint VARCHAR(64), pending_rerun BOOLEAN NOT NULL,
        output_uids TEXT NOT NULL, details TEXT NOT NULL, created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL, started_at DATETIME, finished_at DATETIME,
        PRIMARY KEY (id), CONSTRAINT uq_job_study_version UNIQUE (study_uid, pipeline_version))""",
    "CREATE INDEX ix_jobs_state ON jobs (state)",
]


def test_first_release_sqlite_ledger_upgrades_without_losing_jobs(tmp_path):
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    for ddl in FIRST_RELEASE_DDL:
        db.execute(ddl)
    t = "2026-11-29 10:00:00.000000"
    rows = [
        (
            1,
            "1.2.10",
            "v1",
            "succeeded",
            "stable-study",
            1,
            5,
            None,
            None,
            t,
            None,
            None,
            '{"fetch": 2.5}',
            "1.2.10.1",
            "ffff0000",
            0,
            json.dumps([{"sop_instance_uid": "1.2.10.9", "kind": "seg"}]),
            '{"warnings": []}',
            t,
            t,
            t,
            t,
        ),
        (
            2,
            "1.2.11",
            "v1",
            "failed",
            "api",
            5,
            5,
            None,
            None,
            t,
            "TransientError",
            "PACS down",
            "{}",
            None,
            None,
            0,
            "[]",
            "{}",
            t,
            t,
            t,
            t,
        ),
        (
            3,
            "1.2.12",
            "v1",
            "queued",
            "reconciler",
            0,
            5,
            None,
            None,
            t,
            None,
            None,
            "{}",
            None,
            None,
            0,
            "[]",
            "{}",
            t,
            t,
            None,
            None,
        ),
    ]
    db.executemany(f"INSERT INTO jobs VALUES ({', '.join('?' * 22)})", rows)
    db.commit()
    db.close()

    ledger = Ledger(f"sqlite:///{path}")
    assert _revision(ledger.engine) == [_head_revision()]
    assert "ix_jobs_claim" in {i["name"] for i in sa.inspect(ledger.engine).get_indexes("jobs")}
    done = ledger.get(1)
    assert done.state == JobState.SUCCEEDED and done.timings == {"fetch": 2.5} and done.source_fingerprint == "ffff0000"
    assert done.output_uids == [{"sop_instance_uid": "1.2.10.9", "kind": "seg"}] and done.finished_at.tzinfo
    assert done.source == "pacs" and done.input_path is None  # columns added since, with their defaults
    assert ledger.get(2).error_message == "PACS down" and ledger.counts() == {"succeeded": 1, "failed": 1, "queued": 1}
    assert ledger.claim("w1", 60).study_uid == "1.2.12"  # and it works as a ledger of today
    created, was_new = ledger.enqueue("1.2.13", "v1")
    assert was_new and created.id == 4
    with ledger.engine.connect() as conn:
        assert _schema_diff(conn) == []
    ledger.engine.dispose()


def _open_ledger(url: str, barrier: Any) -> None:
    barrier.wait(timeout=30)
    Ledger(url).engine.dispose()


def test_processes_starting_at_once_upgrade_the_schema_once(ledger_url):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    processes = [context.Process(target=_open_ledger, args=(ledger_url, barrier)) for _ in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    ledger = Ledger(ledger_url)
    assert _revision(ledger.engine) == [_head_revision()]
    ledger.engine.dispose()


# --- PostgreSQL: claims skip locked rows; workers in several processes ---------------------------
def test_postgresql_claim_skips_a_row_locked_by_another_claimer(postgres_cluster):
    url = postgres_cluster.create_database()
    ledger = Ledger(url + "?options=-c%20lock_timeout%3D2s")  # a claim that waited would fail, not hang
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "2s"
    first, _ = ledger.enqueue("1.2.1", "v1")
    second, _ = ledger.enqueue("1.2.2", "v1")
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as other:  # another worker in the middle of its claim transaction
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (first.id,))
        started = time.monotonic()
        claimed = ledger.claim("w2", 60)
        assert claimed.id == second.id and time.monotonic() - started < 1.5  # skipped, did not wait
        other.rollback()
    assert ledger.claim("w3", 60).id == first.id
    ledger.engine.dispose()


def _claim_all(url: str, worker: str, out: multiprocessing.Queue) -> None:
    ledger = Ledger(url)
    claimed = []
    while (job := ledger.claim(worker, 60)) is not None:
        claimed.append(job.id)
        ledger.succeed(job.id, worker, input_series_uid=None, output_uids=[], timings={}, details={})
    out.put((worker, claimed))
    ledger.engine.dispose()


def test_worker_processes_never_get_the_same_job(ledger, ledger_url):
    for i in range(60):
        ledger.enqueue(f"1.2.{i}", "v1")
    ledger.engine.dispose()  # no pooled connection crosses the fork
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    processes = [context.Process(target=_claim_all, args=(ledger_url, f"w{i}", out)) for i in range(3)]
    for p in processes:
        p.start()
    results = dict(out.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(30)
    claimed = [job_id for ids in results.values() for job_id in ids]
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 60
    assert ledger.counts() == {"succeeded": 60}
