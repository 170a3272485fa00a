"""The worker maps each error class to the job's fate, and records timings and outputs."""
from __future__ import annotations

import pytest

from neuroradix.config import Settings
from neuroradix.errors import BadInputError, NotConfiguredError, NotEligibleError, TransientError
from neuroradix.jobs import worker as worker_module
from neuroradix.jobs.ledger import JobState, Ledger
from neuroradix.jobs.worker import Worker


@pytest.fixture()
def setup(tmp_path):
    settings = Settings(orthanc_url="http://x:1", orthanc_user="u", orthanc_password="p", sidecar_token="t" * 20,
                        var_dir=tmp_path, retry_base_seconds=7, retry_max_seconds=20, max_attempts=3)
    ledger = Ledger(settings.resolved_ledger_url)
    w = Worker(settings, ledger=ledger, pacs=object(), analyzers=[], worker_id="w1")
    job, _ = ledger.enqueue("1.2.3", settings.pipeline_version, max_attempts=3)
    return settings, ledger, w, job


@pytest.mark.parametrize(
    "error,state,error_class",
    [
        (NotEligibleError("no usable CT series: MR only"), JobState.SKIPPED, "NotEligibleError"),
        (BadInputError("missing slices"), JobState.FAILED, "BadInputError"),
        (NotConfiguredError("no analyzer produced output"), JobState.FAILED, "NotConfiguredError"),
        (TransientError("PACS not reachable"), JobState.QUEUED, "TransientError"),
        (KeyError("bug"), JobState.QUEUED, "KeyError"),
    ],
)
def test_error_classes_map_to_job_states(setup, monkeypatch, error, state, error_class):
    _settings, ledger, w, job = setup

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(worker_module, "process_study", boom)
    assert w.run_once()
    after = ledger.get(job.id)
    assert after.state == state and after.error_class == error_class
    if state == JobState.QUEUED:  # backed off by retry_base * 2^(attempts-1)
        delay = (after.next_attempt_at - after.updated_at).total_seconds()
        assert 6.5 < delay < 7.5
        assert not w.run_once()  # not claimable before the backoff


def test_backoff_grows_and_is_capped(setup):
    _, _, w, _ = setup
    assert [w.backoff(n) for n in (1, 2, 3, 4)] == [7, 14, 20, 20]


def test_success_records_outputs_and_timings(setup, monkeypatch):
    _settings, ledger, w, job = setup

    class Outcome:
        input_series_uid = "1.2.3.4"
        timings = {"fetch": 0.5}

        def output_records(self):
            return [{"analyzer": "lung-hu", "sop_instance_uid": "2.25.1"}]

        def details(self):
            return {"warnings": ["gantry tilt"], "analyzers": {"lung-hu": "stored"}}

    monkeypatch.setattr(worker_module, "process_study", lambda *a, **k: Outcome())
    w.run_once()
    done = ledger.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.input_series_uid == "1.2.3.4"
    assert done.output_uids == [{"analyzer": "lung-hu", "sop_instance_uid": "2.25.1"}]
    assert done.timings["fetch"] == 0.5 and "total" in done.timings and done.details["warnings"] == ["gantry tilt"]
