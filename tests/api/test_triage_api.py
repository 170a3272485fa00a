"""Triage routes: the worklist's order and filter, acknowledgement (admin only), the audit trail."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from neuroradix.api.app import create_app
from neuroradix.config import Settings
from neuroradix.jobs.ledger import Ledger
from tests.jobs.test_triage_dispatch import RecordingFlags, _dispatcher, _finish

TOKEN = "test-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
READ = {"Authorization": f"Bearer {READER}"}


class LivePacs:
    def ping(self):
        return None


@pytest.fixture()
def node(tmp_path):
    settings = Settings(
        orthanc_url="http://127.0.0.1:1",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token=TOKEN,
        sidecar_reader_token=READER,
        var_dir=tmp_path,
    )
    ledger = Ledger(settings.resolved_ledger_url)
    app = create_app(settings, ledger, LivePacs(), run_reconciler=False)
    with TestClient(app) as client:
        yield client, ledger, tmp_path


def _decided(ledger, tmp_path):
    """Three studies: routine (first), urgent, and one still pending; decided by the real sweep."""
    dispatcher = _dispatcher(tmp_path, ledger, RecordingFlags())
    _finish(ledger, "1.2.9.1", 2.0)
    _finish(ledger, "1.2.9.2", 45.0)
    ledger.enqueue("1.2.9.3", "v-test")
    dispatcher.run_once()


def test_worklist_lists_by_level_then_waiting_time_and_filters(node):
    client, ledger, tmp_path = node
    _decided(ledger, tmp_path)
    items = client.get("/v1/worklist", headers=READ).json()
    assert [(i["study_uid"], i["level"]) for i in items] == [
        ("1.2.9.2", "urgent"),
        ("1.2.9.1", "routine"),
        ("1.2.9.3", "pending"),
    ]
    assert items[0]["reasons"] == ["very severe emphysema"] and items[0]["policy_version"] == "site-test-1"
    assert items[0]["label"] == "ai-urgent" and items[0]["waiting_seconds"] >= 0
    only = client.get("/v1/worklist", params={"level": "routine"}, headers=READ).json()
    assert [i["study_uid"] for i in only] == ["1.2.9.1"]
    assert client.get("/v1/worklist", params={"level": "bogus"}, headers=READ).status_code == 422
    assert client.get("/v1/worklist").status_code == 401


def test_acknowledge_needs_the_admin_token_and_is_recorded(node):
    client, ledger, tmp_path = node
    _decided(ledger, tmp_path)
    path = "/v1/studies/1.2.9.2/acknowledge"
    assert client.post(path, json={"by": "dr-house"}, headers=READ).status_code == 403
    assert client.post(path, json={"by": "<script>"}, headers=ADMIN).status_code == 422
    assert client.post("/v1/studies/1.2.9.99/acknowledge", json={"by": "dr-house"}, headers=ADMIN).status_code == 404
    answer = client.post(path, json={"by": "dr-house"}, headers=ADMIN)
    assert answer.status_code == 200
    assert answer.json()["acknowledged_by"] == "dr-house" and answer.json()["acknowledged_at"]
    listed = {i["study_uid"]: i for i in client.get("/v1/worklist", headers=READ).json()}
    assert listed["1.2.9.2"]["acknowledged_by"] == "dr-house"


def test_timeline_is_in_time_order_from_stable_to_acknowledged(node):
    client, ledger, tmp_path = node
    _decided(ledger, tmp_path)
    client.post("/v1/studies/1.2.9.2/acknowledge", json={"by": "dr-house"}, headers=ADMIN)
    events = client.get("/v1/studies/1.2.9.2/timeline", headers=READ).json()["events"]
    names = [e["event"] for e in events]
    for earlier, later in [
        ("stable", "claimed"),
        ("claimed", "analyzed"),
        ("analyzed", "decided"),
        ("decided", "acknowledged"),
    ]:
        assert names.index(earlier) < names.index(later), names
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    decided = next(e for e in events if e["event"] == "decided")
    assert decided["level"] == "urgent" and decided["policy_version"] == "site-test-1"
    assert client.get("/v1/studies/1.2.9.77/timeline", headers=READ).status_code == 404
    assert client.get("/v1/studies/not-a-uid/timeline", headers=READ).status_code == 422
