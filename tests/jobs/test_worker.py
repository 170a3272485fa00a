"""The worker maps each error class to the job's fate, and records timings and outputs."""

from __future__ import annotations

import copy
import io
import json
import zipfile

import pydicom
import pytest
from fastapi.testclient import TestClient

from neuroradix.api.app import create_app
from neuroradix.config import Settings
from neuroradix.errors import (
    BadInputError,
    LedgerUnavailableError,
    NotConfiguredError,
    NotEligibleError,
    TransientError,
)
from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.jobs import worker as worker_module
from neuroradix.jobs.ledger import JobState, Ledger
from neuroradix.jobs.worker import Worker
from neuroradix.pacs.summaries import InstanceSummary, SeriesSummary
from neuroradix.pipeline.layout import job_results_dir
from neuroradix.samples.phantom import thorax_phantom

JPEG2000 = "1.2.840.10008.1.2.4.90"


@pytest.fixture()
def setup(tmp_path):
    settings = Settings(
        orthanc_url="http://x:1",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token="t" * 20,
        var_dir=tmp_path,
        retry_base_seconds=7,
        retry_max_seconds=20,
        retry_jitter=0,
        max_attempts=3,
    )
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


class MemoryPacs:
    """A PACS in memory with the PacsClient's interface; the first WADO-RS fetch gives undecodable pixels."""

    def __init__(self, datasets):
        self.instances = {str(ds.SOPInstanceUID): ds for ds in datasets}
        self.fetches: list[bool] = []

    def search_series(self, study_uid):
        by_series: dict = {}
        for ds in self.instances.values():
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
        return [
            SeriesSummary(
                uid,
                str(items[0].Modality),
                int(items[0].get("SeriesNumber", 0) or 0),
                "",
                str(items[0].get("Manufacturer", "")),
                len(items),
            )
            for uid, items in by_series.items()
        ]

    def series_metadata(self, study_uid, series_uid):
        return [
            InstanceSummary.from_dataset(ds)
            for ds in self.instances.values()
            if str(ds.SeriesInstanceUID) == series_uid
        ]

    def retrieve_series(self, study_uid, series_uid, *, transcode=False):
        self.fetches.append(transcode)
        found = [copy.deepcopy(ds) for ds in self.instances.values() if str(ds.SeriesInstanceUID) == series_uid]
        if not transcode:  # as stored: a syntax this process cannot decode
            for ds in found:
                ds.file_meta.TransferSyntaxUID = JPEG2000
        return found

    def retrieve_instance(self, study_uid, series_uid, sop_uid):
        return self.instances[sop_uid]

    def store(self, datasets, study_uid):
        for ds in datasets:
            assert ds.StudyInstanceUID == study_uid
            self.instances[str(ds.SOPInstanceUID)] = ds


def test_pacs_job_stores_objects_keeps_labels_and_results_and_the_zip_reads_them(tmp_path):
    settings = Settings(
        orthanc_url="http://x:1", orthanc_user="u", orthanc_password="p", sidecar_token="t" * 20, var_dir=tmp_path
    )
    volume, _ = thorax_phantom()
    source = volume_to_ct_series(volume, uid_seed="worker-pacs")
    study_uid = str(source[0].StudyInstanceUID)
    pacs = MemoryPacs(source)
    ledger = Ledger(settings.resolved_ledger_url)
    job, _ = ledger.enqueue(study_uid, settings.pipeline_version)
    assert Worker(settings, ledger=ledger, pacs=pacs, worker_id="w1").run_once()
    done = ledger.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error_message
    assert pacs.fetches == [False, True]  # UndecodablePixelsError -> the PACS transcodes
    assert len(pacs.instances) == len(source) + 4  # SEG, SR, Parametric Map, PDF stored in the study
    folder = job_results_dir(settings.var_dir, job.id)
    kept = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert kept == ["lung-hu/labels.nii.gz", "results.json"]  # the PACS keeps the objects

    with TestClient(create_app(settings, ledger, pacs, run_reconciler=False)) as client:
        r = client.get(f"/v1/studies/{study_uid}/results.zip", headers={"Authorization": f"Bearer {'t' * 20}"})
    assert r.status_code == 200, r.text
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    dcms = {n: pydicom.dcmread(io.BytesIO(archive.read(n))) for n in archive.namelist() if n.endswith(".dcm")}
    assert {str(d.SOPInstanceUID) for d in dcms.values()} == {o["sop_instance_uid"] for o in done.output_uids}
    assert archive.read("lung-hu/labels.nii.gz") == (folder / "lung-hu" / "labels.nii.gz").read_bytes()
    assert json.loads(archive.read("results.json"))["input_series_uid"] == str(source[0].SeriesInstanceUID)


def test_upload_job_whose_file_is_gone_fails_with_a_reason(setup):
    settings, ledger, w, _ = setup
    job, _ = ledger.enqueue(
        "1.2.4",
        settings.pipeline_version + "+upload-x",
        source="upload",
        input_path=str(settings.var_dir / "uploads" / "gone.zip"),
    )
    while w.run_once():
        pass
    failed = ledger.get(job.id)
    assert failed.state == JobState.FAILED and failed.error_class == "BadInputError"
    assert "upload it again" in failed.error_message


def test_a_ledger_that_refuses_writes_does_not_kill_the_worker(setup, monkeypatch):
    """Disk full while recording the outcome: logged, nothing written, the lease lets the job run again."""
    _settings, ledger, w, job = setup

    def refuse(*args, **kwargs):
        raise LedgerUnavailableError("ledger fail failed 4 times; last error OSError")

    monkeypatch.setattr(worker_module, "process_study", lambda *a, **k: (_ for _ in ()).throw(BadInputError("bad")))
    monkeypatch.setattr(ledger, "fail", refuse)
    assert w.run_once()  # handle() swallowed the refusal
    after = ledger.get(job.id)
    assert after.state == JobState.RUNNING and after.lease_expires_at is not None  # taken again once the lease ends


def test_run_forever_backs_off_while_the_ledger_cannot_claim(setup, monkeypatch):
    _settings, ledger, w, _job = setup
    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 3:
            w.stop()
        raise LedgerUnavailableError("connection lost")

    waits = []
    monkeypatch.setattr(ledger, "claim", refuse)
    monkeypatch.setattr(w._stop, "wait", lambda seconds: waits.append(seconds) or w._stop.is_set())
    monkeypatch.setattr(worker_module.signal, "signal", lambda *a: None)
    w.run_forever()
    assert len(calls) == 3 and waits[:2] == sorted(waits[:2]) and waits[1] > waits[0]
