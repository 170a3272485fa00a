"""The reconciler's sweep enqueues CT studies without a job, page by page, and nothing twice."""

from __future__ import annotations

from neuroradix.config import Settings
from neuroradix.jobs.ledger import Ledger
from neuroradix.jobs.reconciler import sweep
from neuroradix.pacs.summaries import StudySummary


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
