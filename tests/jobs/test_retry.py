"""Retry by time: the backoff policy on a fake clock, and the worker's budgets, time limit and lost leases."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import threading

import pytest
import sqlalchemy as sa

from neuroradix.config import Settings
from neuroradix.errors import BadInputError, NotEligibleError, PacsAuthError, PartialStoreError, TransientError
from neuroradix.jobs import worker as worker_module
from neuroradix.jobs.ledger import JobState, LeaseLost, Ledger, jobs, utcnow
from neuroradix.jobs.retry import RetryPolicy, describe_seconds
from neuroradix.jobs.worker import EXIT_TIMED_OUT, Worker

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = 86400.0


# --- the policy, on a fake clock -------------------------------------------------------------
def test_delay_doubles_up_to_the_cap_without_jitter():
    policy = RetryPolicy(base_seconds=5, max_seconds=120, jitter=0, rand=lambda: 0.5)
    assert [policy.delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 120, 120, 120]


@pytest.mark.parametrize("draw", [0.0, 0.999999])
def test_jitter_stays_within_its_bounds_and_never_exceeds_the_cap(draw):
    policy = RetryPolicy(base_seconds=5, max_seconds=120, jitter=0.2, rand=lambda: draw)
    for n in range(1, 12):
        capped = min(5 * 2 ** (n - 1), 120)
        assert 0.8 * capped - 1e-6 <= policy.delay(n) <= capped


def test_jitter_spreads_the_retries_of_many_jobs():
    policy = RetryPolicy(base_seconds=5, max_seconds=120, jitter=0.2)
    delays = {round(policy.delay(10), 3) for _ in range(50)}
    assert len(delays) > 10 and min(delays) >= 96 and max(delays) <= 120


def test_transient_failures_are_retried_for_the_window_then_given_up():
    """A PACS down for good: tries follow the backoff for 24 h, the last one at the window's end."""
    policy = RetryPolicy(base_seconds=5, max_seconds=120, window_seconds=DAY, jitter=0.2, rand=lambda: 0.5)
    now, failures, tries = T0, 0, []
    while True:
        failures += 1
        delay = policy.transient_delay(T0, now, failures)
        if delay is None:
            break
        now += dt.timedelta(seconds=delay)
        tries.append(now)
    assert tries[-1] == T0 + dt.timedelta(seconds=DAY)  # the last try is when the window ends
    assert now - T0 == dt.timedelta(seconds=DAY)  # ... and it gives up right then
    gaps = [(b - a).total_seconds() for a, b in zip(tries, tries[1:])]
    assert max(gaps) <= 120 and 700 < len(tries) < 1000  # ~ every 108 s for a day, not 5 tries


@pytest.mark.parametrize("outage_minutes", [3.5, 7, 10, 60])
def test_after_an_outage_of_any_length_the_job_runs_again_within_the_cap(outage_minutes):
    policy = RetryPolicy(base_seconds=5, max_seconds=120, window_seconds=DAY, jitter=0.2)
    back = T0 + dt.timedelta(minutes=outage_minutes)
    now, failures = T0, 0
    while now < back:  # every try during the outage fails
        failures += 1
        delay = policy.transient_delay(T0, now, failures)
        assert delay is not None
        now += dt.timedelta(seconds=delay)
    assert (now - back).total_seconds() <= 120  # the first try after the PACS is back


def test_window_and_settings_are_checked_and_described():
    assert RetryPolicy(window_seconds=10).transient_delay(T0, T0 + dt.timedelta(seconds=10), 1) is None
    assert RetryPolicy(window_seconds=10, jitter=0).transient_delay(T0, T0 + dt.timedelta(seconds=8), 1) == 2
    assert [describe_seconds(s) for s in (86400, 600, 45, 1.5)] == ["24 h", "10 min", "45 s", "1.5 s"]
    for bad in ({"base_seconds": 0}, {"max_seconds": 1, "base_seconds": 2}, {"jitter": 1.5}, {"window_seconds": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RetryPolicy(**bad)


# --- the worker ------------------------------------------------------------------------------
@pytest.fixture()
def node(tmp_path):
    settings = Settings(
        orthanc_url="http://x:1",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token="t" * 20,
        var_dir=tmp_path,
        retry_base_seconds=5,
        retry_max_seconds=120,
        retry_jitter=0,
        max_attempts=2,
        job_timeout_seconds=0.5,
    )
    ledger = Ledger(settings.resolved_ledger_url)
    exits: list[int] = []
    w = Worker(settings, ledger=ledger, pacs=object(), analyzers=[], worker_id="w1", exit_process=exits.append)
    job, _ = ledger.enqueue("1.2.3", settings.pipeline_version, max_attempts=2)
    return ledger, w, job, exits


def _due_now(ledger, job_id, **values):
    """Make the job claimable now (the backoff elapsed), optionally rewriting other columns."""
    with ledger.engine.begin() as conn:
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(next_attempt_at=utcnow(), **values))


def _raise(error):
    def boom(*args, **kwargs):
        raise error

    return boom


@pytest.mark.parametrize(
    "error",
    [
        TransientError("QIDO series: PACS not reachable (ConnectionError)"),
        PacsAuthError("QIDO series: PACS refused the sidecar's credentials (HTTP 401)"),
        PartialStoreError("STOW-RS: the PACS stored only 2 of 4 object(s)"),
    ],
)
def test_transient_errors_retry_by_time_not_by_count(node, monkeypatch, error):
    ledger, w, job, _ = node
    monkeypatch.setattr(worker_module, "process_study", _raise(error))
    for n in range(1, 8):  # far more than max_attempts (2)
        assert w.run_once()
        after = ledger.get(job.id)
        assert after.state == JobState.QUEUED and after.error_class == type(error).__name__
        delay = (after.next_attempt_at - after.updated_at).total_seconds()
        assert abs(delay - min(5 * 2 ** (n - 1), 120)) < 0.5
        _due_now(ledger, job.id)
    assert after.transient_attempts == 7 and after.retrying_since is not None
    # 24 h later the PACS still fails: the job ends with the reason, marked for the reconciler
    _due_now(ledger, job.id, retrying_since=utcnow() - dt.timedelta(hours=24, seconds=1))
    assert w.run_once()
    failed = ledger.get(job.id)
    assert failed.state == JobState.FAILED and failed.error_message == f"gave up after 24 h: {error}"
    assert [j.id for j in ledger.gave_up_transient(failed.pipeline_version)] == [job.id]


def test_a_run_of_transient_errors_that_ends_in_a_success_clears_the_mark(node, monkeypatch):
    ledger, w, job, _ = node
    monkeypatch.setattr(worker_module, "process_study", _raise(TransientError("PACS down")))
    w.run_once()
    _due_now(ledger, job.id)

    class Outcome:
        input_series_uid, timings = "1.2.3.4", {}

        def output_records(self):
            return []

        def details(self):
            return {}

    monkeypatch.setattr(worker_module, "process_study", lambda *a, **k: Outcome())
    w.run_once()
    done = ledger.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.retrying_since is None


def test_bugs_stay_limited_by_count(node, monkeypatch):
    ledger, w, job, _ = node
    monkeypatch.setattr(worker_module, "process_study", _raise(KeyError("bug")))
    w.run_once()
    _due_now(ledger, job.id)
    w.run_once()
    failed = ledger.get(job.id)
    assert failed.state == JobState.FAILED and failed.error_message.startswith("gave up after 2 attempts: internal")


def test_a_hung_job_times_out_is_recorded_and_the_process_is_ended(node, monkeypatch):
    """The analyzer never returns: past the time limit the timeout is recorded and the worker exits."""
    ledger, w, job, exits = node
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)  # in production nothing releases it: the process ends
        raise TransientError("woke up after the process should have ended")

    monkeypatch.setattr(worker_module, "process_study", hang)
    monkeypatch.setattr(w, "_exit_process", lambda code: (exits.append(code), release.set()))
    assert w.run_once()  # returns: the late outcome is dropped, not recorded over the timeout
    assert exits == [EXIT_TIMED_OUT]
    after = ledger.get(job.id)
    assert after.state == JobState.QUEUED and after.error_class == "JobTimeout"
    assert after.error_message == "timed out after 0.5 s" and after.lease_owner is None
    # a timeout counts like a bug: the second one ends the job
    _due_now(ledger, job.id)
    release.clear()
    assert w.run_once()
    failed = ledger.get(job.id)
    assert failed.state == JobState.FAILED and failed.error_message == "gave up after 2 attempts: timed out after 0.5 s"


def _hung_worker(settings: Settings) -> None:
    """A worker process whose job never returns, with the real ``os._exit`` (runs in a forked child)."""
    worker_module.process_study = lambda *args, **kwargs: threading.Event().wait()  # type: ignore[assignment]
    Worker(settings, pacs=object(), analyzers=[], worker_id="child").run_once()
    os._exit(0)  # not reached: the timeout ends the process with EXIT_TIMED_OUT


def test_the_worker_process_of_a_hung_job_really_ends(tmp_path):
    settings = Settings(
        orthanc_url="http://x:1",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token="t" * 20,
        var_dir=tmp_path,
        job_timeout_seconds=0.5,
    )
    ledger = Ledger(settings.resolved_ledger_url)
    job, _ = ledger.enqueue("1.2.3", settings.pipeline_version)
    child = multiprocessing.get_context("fork").Process(target=_hung_worker, args=(settings,))
    child.start()
    child.join(60)
    assert child.exitcode == EXIT_TIMED_OUT
    after = ledger.get(job.id)
    assert after.state == JobState.QUEUED and after.error_message == "timed out after 0.5 s"


@pytest.mark.parametrize(
    "error,record",
    [
        (None, "succeed"),
        (NotEligibleError("no CT"), "fail"),
        (BadInputError("missing slices"), "fail"),
        (TransientError("PACS down"), "retry_transient"),
        (KeyError("bug"), "retry_later"),
    ],
)
def test_a_lease_lost_in_any_branch_is_logged_and_the_loop_goes_on(node, monkeypatch, caplog, error, record):
    ledger, w, job, _ = node

    class Outcome:
        input_series_uid, timings = None, {}

        def output_records(self):
            return []

        def details(self):
            return {}

    monkeypatch.setattr(worker_module, "process_study", _raise(error) if error else (lambda *a, **k: Outcome()))
    monkeypatch.setattr(ledger, record, _raise(LeaseLost(f"job {job.id} is no longer held by w1")))
    assert w.run_once()  # nothing escaped
    assert "no longer held" in caplog.text
    other, _ = ledger.enqueue("1.2.9", job.pipeline_version)
    monkeypatch.undo()
    monkeypatch.setattr(worker_module, "process_study", _raise(BadInputError("next")))
    assert w.run_once() and ledger.get(other.id).state == JobState.FAILED  # the worker carries on


def test_run_forever_survives_an_unexpected_error_outside_any_job(node, monkeypatch):
    ledger, w, _job, _ = node
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.ResourceClosedError("a bug in the claim")
        w.stop()
        return None

    monkeypatch.setattr(ledger, "claim", flaky)
    monkeypatch.setattr(w._stop, "wait", lambda seconds: w._stop.is_set())
    monkeypatch.setattr(worker_module.signal, "signal", lambda *a: None)
    w.run_forever()
    assert len(calls) == 2
