"""Triage on arrival end to end: a real Orthanc, C-STORE with storescu, the sidecar's triage sweep,
and real loopback receivers (an MLLP listener that ACKs, an HTTP receiver for the webhook and FHIR).

As a new user would set it up: ``neuroradix triage set`` installs a policy whose rule raises
``priority`` on a lung measurement, ``neuroradix destinations add`` registers the receivers.
"""

from __future__ import annotations

import json
import time

import hl7
import numpy as np
import pytest
import requests
from fhir.resources.R4B.bundle import Bundle

from neuroradix.cli import main as neuroradix
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.notify.webhook import verify
from neuroradix.pacs.study_flags import TRIAGE_METADATA, StudyFlags
from neuroradix.samples.phantom import thorax_phantom
from tests.factory import ct_series
from tests.harness import EphemeralNode, require_orthanc
from tests.support import require_tool

POLICY = """version: "site-it-1"
mode: active
escalate_after_minutes: 30
max_wait_minutes: 60
rules:
  - name: severe emphysema
    level: priority
    measurement: "Total LAA-950"
    at_least: 10
    analyzer: lung-hu
"""


def _study(tmp_path, seed: str, emphysema: float):
    volume, _ = thorax_phantom(emphysema=emphysema, seed=len(seed))
    datasets = volume_to_ct_series(volume, uid_seed=seed)
    return str(datasets[0].StudyInstanceUID), write_series(datasets, tmp_path / seed)


def _wait(condition, timeout: float, what: str, node: EphemeralNode):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout} s\n{node.log_tail()}")


@pytest.fixture
def triage_node(tmp_path_factory, mllp_peer, http_peer):
    require_orthanc()
    require_tool("storescu")
    root = tmp_path_factory.mktemp("triage-node")
    policy = root.parent / "site-policy.yaml"
    policy.write_text(POLICY)
    secret = root.parent / "webhook.secret"
    secret.write_text("webhook-secret-for-the-test")
    secret.chmod(0o600)
    assert neuroradix(["triage", "set", str(policy), "--var", str(root)]) == 0
    for args in (
        ["ris", "--kind", "hl7v2", "--url", mllp_peer.url],
        ["hook", "--kind", "webhook", "--url", http_peer.url + "/hook", "--secret-file", str(secret)],
        ["fhir", "--kind", "fhir", "--url", http_peer.url + "/fhir"],
    ):
        assert neuroradix(["destinations", "add", *args, "--var", str(root)]) == 0
    node = EphemeralNode(
        root,
        reconcile_seconds=3600,
        extra_env={
            "NEURORADIX_TRIAGE_POLL_SECONDS": "0.5",
            "NEURORADIX_NOTIFY_RETRY_BASE_SECONDS": "1",
            "NEURORADIX_NOTIFY_RETRY_MAX_SECONDS": "3",
            "NEURORADIX_NOTIFY_TIMEOUT_SECONDS": "3",
        },
    ).start()
    yield node, secret.read_bytes()
    node.stop()


def _flag(node: EphemeralNode, flags: StudyFlags, study_uid: str) -> str:
    """The study's node label (labels on Orthanc 1.12+, else the level in the triage metadata)."""
    if flags.has_labels():
        labels = [label for label in flags.labels(study_uid) if label.startswith("ai-")]
        assert len(labels) <= 1, labels  # exactly one node label at any time
        return labels[0] if labels else ""
    study_id = flags.study_id(study_uid)
    answer = requests.get(
        f"{node.config.orthanc_url}/studies/{study_id}/metadata/{TRIAGE_METADATA}",
        auth=node.accounts()["people"],
        timeout=10,
    )
    return "ai-" + json.loads(answer.text)["level"] if answer.status_code == 200 else ""


SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def _sr_triage_level(node: EphemeralNode, study_uid: str) -> str:
    """The triage level coded in the node's SR of the study, as read back over WADO-RS."""
    for series in node.series(study_uid):
        if series.modality != "SR" or series.manufacturer != "Neuro Radix":
            continue
        for instance in node.pacs.series_metadata(study_uid, series.series_uid):
            sr = node.pacs.retrieve_instance(study_uid, series.series_uid, instance.sop_instance_uid)
            pending = list(sr.get("ContentSequence", []))
            while pending:
                item = pending.pop()
                name = item.get("ConceptNameCodeSequence")
                if name and name[0].CodeValue == "triage-level":
                    return str(item.ConceptCodeSequence[0].CodeValue)
                pending.extend(item.get("ContentSequence", []))
    return ""


def test_two_studies_are_flagged_listed_and_notified(triage_node, mllp_peer, http_peer, tmp_path):
    node, secret = triage_node
    flags = StudyFlags(node.config.orthanc_url, *node.accounts()["people"])
    high_uid, high_files = _study(tmp_path, "it-triage-high", emphysema=0.25)
    low_uid, low_files = _study(tmp_path, "it-triage-low", emphysema=0.0)
    node.storescu(high_files)
    node.storescu(low_files)
    sent = time.monotonic()

    _wait(lambda: _flag(node, flags, high_uid) == "ai-priority", 120, "the priority label", node)
    _wait(lambda: _flag(node, flags, low_uid) == "ai-routine", 120, "the routine label", node)
    assert time.monotonic() - sent < 120

    worklist = node.api("GET", "/v1/worklist")
    order = [item["study_uid"] for item in worklist if item["study_uid"] in (high_uid, low_uid)]
    assert order == [high_uid, low_uid]
    assert worklist[0]["reasons"] == ["severe emphysema"] and worklist[0]["policy_version"] == "site-it-1"

    def by_study(uid):
        return [m for m in mllp_peer.received if uid in m]

    _wait(lambda: by_study(high_uid) and by_study(low_uid), 60, "one ORU per study", node)
    oru = hl7.parse(by_study(high_uid)[0])
    assert str(oru.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(oru.segment("OBR")[5]) == "A"
    assert str(hl7.parse(by_study(low_uid)[0]).segment("OBR")[5]) == "R"

    hooks = _wait(lambda: [r for r in http_peer.received if r.path == "/hook"][:2], 60, "two webhooks", node)
    for hook in hooks:
        assert verify(hook.body, hook.headers["x-neuroradix-signature"], secret)
    fhir = _wait(lambda: [r for r in http_peer.received if r.path == "/fhir"][:2], 60, "two FHIR bundles", node)
    for posted in fhir:
        bundle = Bundle.model_validate_json(posted.body)
        assert bundle.type == "transaction"

    assert _sr_triage_level(node, high_uid) == "priority"  # the SR states the decision too
    assert _sr_triage_level(node, low_uid) == "routine"

    timeline = node.api("GET", f"/v1/studies/{high_uid}/timeline")["events"]
    names = [e["event"] for e in timeline]
    assert {"stable", "claimed", "analyzed", "decided", "labelled", "delivery"} <= set(names)
    assert all("Doe" not in json.dumps(e) for e in timeline)


def test_a_listener_down_gets_the_message_after_it_returns(triage_node, mllp_peer, tmp_path):
    node, _ = triage_node
    mllp_peer.mode = "drop"  # the RIS interface engine is down: connections close unanswered
    uid, files = _study(tmp_path, "it-triage-outage", emphysema=0.0)
    node.storescu(files)
    _wait(lambda: [m for m in mllp_peer.received if uid in m], 120, "a first attempt", node)
    time.sleep(3)
    mllp_peer.mode = "aa"
    _wait(
        lambda: any(
            d["event"] == "delivery" and d.get("state") == "delivered" and d["destination"] == "ris"
            for d in node.api("GET", f"/v1/studies/{uid}/timeline")["events"]
        ),
        60,
        "the delivery after the outage",
        node,
    )
    ids = {str(hl7.parse(m).segment("MSH")[10]) for m in mllp_peer.received if uid in m}
    assert len(ids) == 1  # the same message every time


def test_a_study_that_cannot_be_analyzed_is_not_analyzed_and_notified(triage_node, mllp_peer):
    node, _ = triage_node
    flags = StudyFlags(node.config.orthanc_url, *node.accounts()["people"])
    datasets = ct_series(np.zeros((12, 16, 16), np.float32), modality="MR", description="T1 brain")
    for ds in datasets:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    uid = str(datasets[0].StudyInstanceUID)
    node.upload(datasets)
    _wait(lambda: _flag(node, flags, uid) == "ai-not-analyzed", 120, "the not-analyzed label", node)
    message = _wait(lambda: [m for m in mllp_peer.received if uid in m], 60, "the not-analyzed notice", node)[0]
    assert "not-analyzed" in message
