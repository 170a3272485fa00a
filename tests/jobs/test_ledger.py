"""The job ledger's state machine: idempotent enqueue, exclusive claims, leases, retries."""
from __future__ import annotations

import threading
import time

import pytest

from neuroradix.jobs.ledger import JobState, LeaseLost, Ledger


@pytest.fixture()
def ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")


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
    ledger.succeed(second.id, "w2", input_series_uid="1.2.4", output_uids=[{"sop_instance_uid": "1.2.5"}],
                   timings={"fetch": 1.0}, details={})
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
    ledger.succeed(again.id, "w1", input_series_uid="1.2", output_uids=[], timings={}, details={}, fingerprint="cccc3333")
    assert ledger.get(job.id).state == JobState.SUCCEEDED and ledger.get(job.id).source_fingerprint == "cccc3333"
