"""The triage sweep against a real ledger and real loopback receivers (MLLP, HTTP).

The PACS side is a recording stand-in for :class:`~neuroradix.pacs.study_flags.StudyFlags` here;
``tests/integration/test_triage.py`` runs the same sweep against a real Orthanc.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import hl7
import pytest

from neuroradix.errors import TransientError
from neuroradix.jobs.ledger import Ledger, utcnow
from neuroradix.jobs.retry import RetryPolicy
from neuroradix.jobs.triage import TriageDispatcher, TriageOptions
from neuroradix.jobs.triage_store import DeliveryState, TriageStore
from neuroradix.notify.destinations import Destination, DestinationStore
from neuroradix.notify.webhook import sign
from neuroradix.pacs.study_flags import PatientInfo
from neuroradix.triage.policy import PolicyStore

VERSION = "v-test"
POLICY = """
version: "site-test-1"
mode: {mode}
escalate_after_minutes: {escalate}
max_wait_minutes: 60
rules:
  - name: severe emphysema
    level: priority
    measurement: "Total LAA-950"
    at_least: 15
  - name: very severe emphysema
    level: urgent
    measurement: "Total LAA-950"
    at_least: 40
"""


class RecordingFlags:
    """Stands in for Orthanc: records labels and metadata, answers the patient module."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}
        self.metadata: dict[str, dict] = {}
        self.down = False

    def apply(self, study_uid, label, all_labels, decision):  # noqa: ANN001
        if self.down:
            raise TransientError("PACS not reachable")
        assert label in all_labels
        self.labels[study_uid] = label
        self.metadata[study_uid] = decision
        return "label"

    def patient_info(self, study_uid):  # noqa: ANN001
        return PatientInfo("PAT-1", "Doe^Jane", "19600101", "F", "ACC-1")


def _results(laa: float, untrained: bool = False) -> dict:
    return {
        "lung-hu": {
            "analyzer": {"name": "lung-hu", "version": "1", "title": "Lung", "untrained": untrained},
            "findings": [],
            "measurements": [{"name": "Total LAA-950", "value": laa, "unit": "%"}],
        }
    }


def _finish(ledger: Ledger, study_uid: str, laa: float | None, *, rerun: bool = False) -> None:
    """Enqueue (or rerun) the study's job and end it: succeeded with LAA-950 = laa, or failed (None)."""
    ledger.enqueue(study_uid, VERSION, rerun=rerun)
    job = ledger.claim("w", 30)
    assert job is not None and job.study_uid == study_uid
    if laa is None:
        ledger.fail(job.id, "w", "BadInputError", "not a CT series")
    else:
        ledger.succeed(
            job.id, "w", input_series_uid="1.2", output_uids=[], timings={}, details={"results": _results(laa)}
        )


def _dispatcher(tmp_path: Path, ledger: Ledger, flags, *, mode="active", escalate=30) -> TriageDispatcher:
    policy = tmp_path / "policy.yaml"
    if not policy.exists():
        policy.write_text(POLICY.format(mode=mode, escalate=escalate))
    options = TriageOptions(
        poll_seconds=0.1,
        notify_timeout_seconds=2.0,
        lease_seconds=3.0,
        retry=RetryPolicy(base_seconds=0.2, max_seconds=0.5, window_seconds=60.0, jitter=0.0),
        viewer_url="http://127.0.0.1:3000",
    )
    return TriageDispatcher(
        VERSION, ledger, flags, PolicyStore(policy), DestinationStore(tmp_path / "destinations.json"), options
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")


@pytest.fixture
def secret(tmp_path: Path) -> tuple[str, bytes]:
    path = tmp_path / "webhook.secret"
    path.write_bytes(b"s3cret-for-the-webhook-receiver")
    path.chmod(0o600)
    return str(path), path.read_bytes()


def _pass_until(dispatcher: TriageDispatcher, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dispatcher.run_once()
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_decision_labels_and_notifies_each_destination_once(tmp_path, ledger, mllp_peer, http_peer, secret):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags)
    dispatcher.destinations.add(Destination("ris", "hl7v2", mllp_peer.url))
    dispatcher.destinations.add(Destination("hook", "webhook", http_peer.url + "/hook", secret_file=secret[0]))

    ledger.enqueue("1.2.3.1", VERSION)
    dispatcher.run_once()
    assert flags.labels["1.2.3.1"] == "ai-pending"  # from hand-off to decision

    _finish(ledger, "1.2.3.1", 20.0)
    _pass_until(dispatcher, lambda: len(mllp_peer.received) == 1 and len(http_peer.received) == 1)
    assert flags.labels["1.2.3.1"] == "ai-priority"
    assert flags.metadata["1.2.3.1"]["reasons"] == ["severe emphysema"]

    oru = hl7.parse(mllp_peer.received[0])
    assert str(oru.segment("OBR")[5]) == "A"  # table 0168: ASAP for priority
    assert "1.2.3.1" in mllp_peer.received[0]
    hook = http_peer.received[0]
    assert hook.headers["x-neuroradix-signature"] == sign(hook.body, secret[1])
    body = json.loads(hook.body)
    assert body["level"] == "priority" and body["delivery_id"] == hook.headers["x-neuroradix-delivery"]

    for _ in range(3):  # nothing more to do: no second notice of the same decision
        dispatcher.run_once()
    assert len(mllp_peer.received) == 1 and len(http_peer.received) == 1
    store = TriageStore(ledger)
    assert store.delivery_counts() == {"delivered": 2}
    events = [e["event"] for e in store.events("1.2.3.1")]
    assert events[:2] == ["received", "labelled"] and "decided" in events and events.count("delivery") == 2


def test_a_lower_rerun_is_recorded_but_the_level_is_held_until_acknowledged(tmp_path, ledger, mllp_peer):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags)
    dispatcher.destinations.add(Destination("ris", "hl7v2", mllp_peer.url))
    _finish(ledger, "1.2.3.2", 45.0)
    _pass_until(dispatcher, lambda: len(mllp_peer.received) == 1)
    assert flags.labels["1.2.3.2"] == "ai-urgent"

    _finish(ledger, "1.2.3.2", 3.0, rerun=True)  # late slices: a lower result
    dispatcher.run_once()
    row = TriageStore(ledger).get("1.2.3.2")
    assert row is not None and row.level == "urgent" and row.decision["held"]
    assert row.decision["computed_level"] == "routine"
    assert len(mllp_peer.received) == 1  # a held level notifies nobody again

    _finish(ledger, "1.2.3.2", None, rerun=True)  # a rerun that fails keeps the decided level too
    dispatcher.run_once()
    assert TriageStore(ledger).get("1.2.3.2").level == "urgent"


def test_failed_study_is_not_analyzed_and_notified(tmp_path, ledger, mllp_peer):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags)
    dispatcher.destinations.add(Destination("ris", "hl7v2", mllp_peer.url, min_level="urgent"))
    _finish(ledger, "1.2.3.3", None)
    _pass_until(dispatcher, lambda: len(mllp_peer.received) == 1)
    assert flags.labels["1.2.3.3"] == "ai-not-analyzed"
    assert "not a CT series" in mllp_peer.received[0]
    _finish(ledger, "1.2.3.4", 5.0)  # routine: below this destination's min_level
    dispatcher.run_once()
    dispatcher.run_once()
    assert flags.labels["1.2.3.4"] == "ai-routine" and len(mllp_peer.received) == 1


def test_shadow_mode_decides_but_labels_and_sends_nothing(tmp_path, ledger, mllp_peer):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags, mode="shadow")
    dispatcher.destinations.add(Destination("ris", "hl7v2", mllp_peer.url))
    _finish(ledger, "1.2.3.5", 50.0)
    for _ in range(3):
        dispatcher.run_once()
    row = TriageStore(ledger).get("1.2.3.5")
    assert row is not None and row.level == "urgent" and row.decision["mode"] == "shadow"
    assert flags.labels == {} and mllp_peer.received == []


def test_receiver_down_then_back_gets_the_same_delivery_id(tmp_path, ledger, mllp_peer):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags)
    dispatcher.destinations.add(Destination("ris", "hl7v2", mllp_peer.url))
    mllp_peer.mode = "ae"  # the RIS answers "application error": retried
    _finish(ledger, "1.2.3.6", 20.0)
    _pass_until(dispatcher, lambda: len(mllp_peer.received) >= 2)
    store = TriageStore(ledger)
    assert store.delivery_counts() == {"pending": 1}
    mllp_peer.mode = "aa"
    _pass_until(dispatcher, lambda: store.delivery_counts() == {"delivered": 1})
    ids = {str(hl7.parse(m).segment("MSH")[10]) for m in mllp_peer.received}
    assert len(ids) == 1  # every retry carries the same control id (from the delivery id)


def test_malformed_rejection_goes_to_dead_letter_and_retry_requeues(tmp_path, ledger, mllp_peer):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags)
    dispatcher.destinations.add(Destination("ris", "hl7v2", mllp_peer.url))
    mllp_peer.mode = "ar-malformed"
    _finish(ledger, "1.2.3.7", 20.0)
    store = TriageStore(ledger)
    _pass_until(dispatcher, lambda: store.delivery_counts() == {"dead": 1})
    dead = store.deliveries(state=DeliveryState.DEAD)[0]
    assert "101" in (dead.last_detail or "")
    mllp_peer.mode = "aa"
    assert store.retry_dead() == 1
    _pass_until(dispatcher, lambda: store.delivery_counts() == {"delivered": 1})


def test_unacknowledged_urgent_study_is_escalated_once(tmp_path, ledger, mllp_peer):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags, escalate=0)
    dispatcher.destinations.add(Destination("ris", "hl7v2", mllp_peer.url))
    _finish(ledger, "1.2.3.8", 45.0)
    dispatcher.run_once()
    _pass_until(dispatcher, lambda: len(mllp_peer.received) == 2)
    for _ in range(3):
        dispatcher.run_once()
    kinds = [e.kind for e in TriageStore(ledger).deliveries()]
    assert sorted(kinds) == ["decision", "escalation"]


def test_study_waiting_past_the_maximum_is_noticed(tmp_path, ledger, mllp_peer):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags)
    dispatcher.destinations.add(Destination("ris", "hl7v2", mllp_peer.url))
    ledger.enqueue("1.2.3.9", VERSION)  # handed off, never finished
    dispatcher.run_once()
    dispatcher.run_once(now=utcnow() + dt.timedelta(minutes=61))
    _pass_until(dispatcher, lambda: len(mllp_peer.received) == 1)
    assert [d.kind for d in TriageStore(ledger).deliveries()] == ["max-wait"]
    assert "pending" in mllp_peer.received[0].lower()


def test_pacs_down_keeps_the_label_wanted_until_it_answers(tmp_path, ledger):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags)
    flags.down = True
    _finish(ledger, "1.2.3.10", 20.0)
    dispatcher.run_once()
    assert "1.2.3.10" not in flags.labels
    flags.down = False
    dispatcher.run_once()
    assert flags.labels["1.2.3.10"] == "ai-priority"


def _deliver_in_child(tmp_path: str, ledger_url: str) -> None:
    dispatcher = _dispatcher(Path(tmp_path), Ledger(ledger_url), RecordingFlags())
    dispatcher.run_once()  # blocks on the silent receiver until killed


def test_a_killed_sender_loses_no_notification(tmp_path, ledger, mllp_peer):
    flags = RecordingFlags()
    dispatcher = _dispatcher(tmp_path, ledger, flags)
    dispatcher.destinations.add(Destination("ris", "hl7v2", mllp_peer.url))
    _finish(ledger, "1.2.3.11", 20.0)
    mllp_peer.mode = "silent"  # takes the message, never answers
    child = multiprocessing.get_context("spawn").Process(
        target=_deliver_in_child, args=(str(tmp_path), str(ledger.engine.url))
    )
    child.start()
    deadline = time.monotonic() + 60
    while not mllp_peer.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mllp_peer.received, "the child never sent"
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    mllp_peer.mode = "aa"
    store = TriageStore(ledger)
    assert store.delivery_counts() == {"pending": 1}  # decided and queued, not delivered
    _pass_until(dispatcher, lambda: store.delivery_counts() == {"delivered": 1}, timeout=30)
    ids = [str(hl7.parse(m).segment("MSH")[10]) for m in mllp_peer.received]
    assert len(ids) >= 2 and len(set(ids)) == 1  # sent again after the lease expired, same id
