"""The reconciler enqueues CT studies without a job (page by page, nothing twice), requeues jobs that
gave up on an outage once the PACS answers, and reruns studies whose results left the PACS."""

from __future__ import annotations

import pytest

from neuroradix import MANUFACTURER
from neuroradix.config import Settings
from neuroradix.errors import NotEligibleError, TransientError
from neuroradix.jobs.ledger import JobState, Ledger
from neuroradix.jobs.reconciler import reconcile, sweep, verify_results
from neuroradix.pacs.summaries import SeriesSummary, StudySummary


class PagedPacs:
    def __init__(self, uids):
        self.uids, self.calls = uids, []

    def search_studies(self, *, modality=None, limit=100, offset=0):
        self.calls.append((modality, limit, offset))
        return [StudySummary(u, ("CT",)) for u in self.uids[offset : offset + limit]]


def test_sweep_enqueues_missing_studies_across_pages(tmp_path):
    settings = Settings(
        orthanc_url="http://x:1", orthanc_user="u", orthanc_password="p", sidecar_token="t" * 20, var_dir=tmp_path
    )
    ledger = Ledger(settings.resolved_ledger_url)
    ledger.enqueue("1.2.0", settings.pipeline_version)  # the plugin already brought this one
    ledger.enqueue("1.2.1", "an-older-pipeline")  # results for an older version do not count
    pacs = PagedPacs([f"1.2.{i}" for i in range(5)])
    assert sweep(settings, ledger, pacs, page_size=2) == 4
    assert pacs.calls == [("CT", 2, 0), ("CT", 2, 2), ("CT", 2, 4)]
    jobs = {j.study_uid: j for j in ledger.list(limit=100) if j.pipeline_version == settings.pipeline_version}
    assert set(jobs) == {f"1.2.{i}" for i in range(5)}
    assert {jobs[f"1.2.{i}"].trigger for i in range(1, 5)} == {"reconciler"}
    held_back = jobs["1.2.3"].next_attempt_at - jobs["1.2.3"].created_at
    assert abs(held_back.total_seconds() - settings.reconcile_settle_seconds) < 1  # lets the study settle
    assert sweep(settings, ledger, pacs, page_size=2) == 0  # level-triggered: nothing twice


# --- level-triggered repairs -----------------------------------------------------------------
class Archive:
    """A PACS in memory: studies with series summaries; QIDO fails while ``down``."""

    def __init__(self):
        self.series: dict[str, dict[str, SeriesSummary]] = {}
        self.down = False
        self.series_searches = 0

    def search_studies(self, *, modality=None, limit=100, offset=0):
        if self.down:
            raise TransientError("QIDO studies: PACS not reachable (ConnectionError)")
        return [StudySummary(u, ("CT",)) for u in sorted(self.series)[offset : offset + limit]]

    def search_series(self, study_uid):
        if self.down:
            raise TransientError("QIDO series: PACS not reachable (ConnectionError)")
        self.series_searches += 1
        if study_uid not in self.series:
            raise NotEligibleError("QIDO series: not found in the PACS (HTTP 404)")
        return list(self.series[study_uid].values())


def _settings(tmp_path, **kwargs):
    return Settings(
        orthanc_url="http://x:1",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token="t" * 20,
        var_dir=tmp_path,
        **kwargs,
    )


def _processed(ledger, archive, settings, study_uid, outputs=2):
    """A study whose job succeeded: the CT series and ``outputs`` one-instance result series in the PACS."""
    source = f"{study_uid}.1"
    records = [
        {"series_instance_uid": f"{study_uid}.9{i}", "sop_instance_uid": f"{study_uid}.9{i}.1"} for i in range(outputs)
    ]
    archive.series[study_uid] = {source: SeriesSummary(source, "CT", 1, "", "Scanner", 100)}
    for r in records:
        uid = r["series_instance_uid"]
        archive.series[study_uid][uid] = SeriesSummary(uid, "SEG", 90, "", MANUFACTURER, 1)
    ledger.enqueue(study_uid, settings.pipeline_version)
    job = ledger.claim("w1", 60)
    ledger.succeed(job.id, "w1", input_series_uid=source, output_uids=records, timings={}, details={})
    return job


def test_results_deleted_or_replaced_in_the_pacs_make_the_study_run_again(ledger, tmp_path):
    settings = _settings(tmp_path, reconcile_verify_per_sweep=2)
    archive = Archive()
    intact = _processed(ledger, archive, settings, "1.5.1")
    deleted = _processed(ledger, archive, settings, "1.5.2")
    forged = _processed(ledger, archive, settings, "1.5.3")
    short = _processed(ledger, archive, settings, "1.5.4")
    source_gone = _processed(ledger, archive, settings, "1.5.5")
    study_gone = _processed(ledger, archive, settings, "1.5.6")
    del archive.series["1.5.2"]["1.5.2.91"]
    archive.series["1.5.3"]["1.5.3.90"] = SeriesSummary("1.5.3.90", "SEG", 90, "", "Someone else", 1)
    archive.series["1.5.4"]["1.5.4.91"] = SeriesSummary("1.5.4.91", "SEG", 90, "", MANUFACTURER, 3)
    del archive.series["1.5.5"]["1.5.5.1"]  # the CT is gone too: nothing to analyze again
    del archive.series["1.5.6"]
    cursor, requeued, checked = 0, 0, []
    for _ in range(3):  # 6 jobs at 2 per sweep: the cursor walks them, then wraps around
        before = archive.series_searches
        found, cursor = verify_results(settings, ledger, archive, cursor, settings.reconcile_verify_per_sweep)
        requeued += found
        checked.append(archive.series_searches - before)
    assert checked == [2, 2, 2] and cursor == study_gone.id
    assert verify_results(settings, ledger, archive, cursor, 2) == (0, 0)  # the end: wrap around
    state = {j.id: ledger.get(j.id).state for j in (intact, deleted, forged, short, source_gone, study_gone)}
    assert requeued == 3
    assert state == {
        intact.id: JobState.SUCCEEDED,
        deleted.id: JobState.QUEUED,
        forged.id: JobState.QUEUED,
        short.id: JobState.QUEUED,
        source_gone.id: JobState.SUCCEEDED,
        study_gone.id: JobState.SUCCEEDED,
    }
    assert {ledger.get(j.id).trigger for j in (deleted, forged, short)} == {"reconciler"}


def test_jobs_that_gave_up_on_an_outage_are_queued_again_once_the_pacs_answers(ledger, tmp_path):
    settings = _settings(tmp_path)
    archive = Archive()
    archive.series["1.6.1"] = {}
    ledger.enqueue("1.6.1", settings.pipeline_version)
    job = ledger.claim("w1", 60)
    ledger.fail(job.id, "w1", "TransientError", "gave up after 24 h: PACS down", retrying_since=job.updated_at)
    archive.down = True
    with pytest.raises(TransientError):
        reconcile(settings, ledger, archive)
    assert ledger.get(job.id).state == JobState.FAILED  # nothing queued while the PACS is still down
    archive.down = False
    report = reconcile(settings, ledger, archive)
    assert report.requeued_after_outage == 1 and report.enqueued == 0
    again = ledger.get(job.id)
    assert again.state == JobState.QUEUED and again.trigger == "reconciler" and again.retrying_since is None
    assert reconcile(settings, ledger, archive).requeued_after_outage == 0  # once
