"""The FHIR transaction Bundle: validated with fhir.resources' R4 models, deterministic, and POSTed to a
real loopback receiver whose answers are classified."""

from __future__ import annotations

import copy
import json

import pytest
from fhir.resources.R4B.bundle import Bundle

from neuroradix.errors import NotificationError
from neuroradix.notify.fhir import build_bundle, entry_uuid, send_fhir, validate_bundle, validate_resource
from neuroradix.notify.message import PatientInfo
from tests.notify.conftest import make_notification


def _resources(bundle, kind):
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_bundle_validates_and_has_the_parts(notification):
    bundle = build_bundle(notification, patient_system="urn:oid:1.2.3.4")
    parsed = Bundle.model_validate(bundle)  # the receiver's view: an R4 transaction bundle
    assert parsed.type == "transaction"
    (report,) = _resources(bundle, "DiagnosticReport")
    observations = _resources(bundle, "Observation")
    assert len(observations) == 1 + len(notification.evidence)
    assert report["status"] == "preliminary" and all(o["status"] == "preliminary" for o in observations)
    assert report["subject"] == {"type": "Patient", "identifier": {"system": "urn:oid:1.2.3.4", "value": "PAT-7781"}}
    assert report["imagingStudy"] == [
        {
            "type": "ImagingStudy",
            "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{notification.study_uid}"},
        }
    ]
    assert report["basedOn"][0]["identifier"]["value"] == "ACC-2026-0042"
    assert "priority" in report["conclusion"] and "severe emphysema" in report["conclusion"]
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert all(u.startswith("urn:uuid:") for u in full_urls) and len(set(full_urls)) == len(full_urls)
    assert [r["reference"] for r in report["result"]] == full_urls[1:]
    for entry in bundle["entry"]:
        request = entry["request"]
        assert request["method"] == "POST" and request["url"] == entry["resource"]["resourceType"]
        assert request["ifNoneExist"].startswith("identifier=urn:neuroradix:notification|")
    level, laa, effusion = observations
    assert level["valueCodeableConcept"]["coding"][0]["code"] == "priority"
    interp = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    assert level["interpretation"][0]["coding"][0] == {"system": interp, "code": "A", "display": "Abnormal"}
    assert laa["valueQuantity"] == {"value": 17.25, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert laa["interpretation"][0]["coding"][0]["code"] == "H"
    assert laa["referenceRange"][0]["high"]["value"] == 15.0
    assert effusion["interpretation"][0]["coding"][0]["code"] == "N"  # 0.42 < 0.8: the rule did not fire
    assert json.loads(json.dumps(bundle)) == bundle


def test_same_notification_same_bundle(notification):
    assert build_bundle(notification) == build_bundle(make_notification())
    other = build_bundle(make_notification(delivery_id="nrx-ffff"))
    assert {e["fullUrl"] for e in other["entry"]}.isdisjoint(
        {e["fullUrl"] for e in build_bundle(notification)["entry"]}
    )
    assert build_bundle(notification)["entry"][0]["fullUrl"] == entry_uuid(notification.delivery_id, "report")


@pytest.mark.parametrize("level", ["urgent", "routine", "pending", "not-analyzed"])
def test_every_level_validates(level):
    n = make_notification(level=level, patient=PatientInfo(), accession_number="")
    bundle = build_bundle(n)
    (report,) = _resources(bundle, "DiagnosticReport")
    assert "subject" not in report and "basedOn" not in report
    level_obs = _resources(bundle, "Observation")[0]
    assert ("interpretation" in level_obs) == (level in ("urgent", "routine"))


def test_a_broken_resource_is_refused(notification):
    bundle = build_bundle(notification)
    broken = copy.deepcopy(bundle)
    del broken["entry"][1]["resource"]["code"]  # Observation.code is required (1..1)
    with pytest.raises(NotificationError, match="Observation.*code"):
        validate_bundle(broken)
    unknown = copy.deepcopy(bundle)
    unknown["entry"][0]["resource"]["priority"] = "stat"  # not an element of DiagnosticReport
    with pytest.raises(NotificationError, match="DiagnosticReport"):
        validate_bundle(unknown)
    wrong_type = copy.deepcopy(bundle)
    wrong_type["entry"][2]["resource"]["valueQuantity"]["value"] = "a lot"
    with pytest.raises(NotificationError, match="Observation"):
        validate_bundle(wrong_type)
    bad_status = copy.deepcopy(bundle)
    bad_status["entry"][1]["resource"]["status"] = "maybe"  # a binding fhir.resources does not check
    with pytest.raises(NotificationError, match="value set"):
        validate_bundle(bad_status)
    no_request = copy.deepcopy(bundle)
    del no_request["entry"][1]["request"]
    with pytest.raises(NotificationError, match="POST or PUT"):
        validate_bundle(no_request)
    with pytest.raises(NotificationError, match="resource type"):
        validate_resource({"resourceType": "Patient"})
    validate_bundle(bundle)  # the original is untouched and still valid


def test_delivered_to_a_receiver(http_peer, notification):
    bundle = build_bundle(notification)
    result = send_fhir(http_peer.url + "/fhir", bundle, timeout=5, auth_header="Bearer t0ken")
    assert result.ok and result.detail == "HTTP 200"
    (got,) = http_peer.received
    assert got.path == "/fhir"
    assert got.headers["content-type"] == "application/fhir+json"
    assert got.headers["authorization"] == "Bearer t0ken"
    Bundle.model_validate_json(got.body)  # what arrived validates on the receiver's side
    assert json.loads(got.body) == bundle


@pytest.mark.parametrize(
    ("answer", "permanent"),
    [(503, False), (500, False), (408, False), (429, False), (400, True), (404, True), (422, True), (401, True)],
)
def test_status_classes(http_peer, notification, answer, permanent):
    http_peer.answers = [answer]
    result = send_fhir(http_peer.url, build_bundle(notification), timeout=5)
    assert not result.ok and result.permanent is permanent and result.detail.startswith(f"HTTP {answer}")


def test_timeout_is_retried(http_peer, notification):
    http_peer.answers = ["slow"]
    result = send_fhir(http_peer.url, build_bundle(notification), timeout=0.5)
    assert not result.ok and not result.permanent and result.detail == "timeout"


def test_connection_refused_is_retried(closed_port, notification):
    result = send_fhir(f"http://127.0.0.1:{closed_port}/fhir", build_bundle(notification), timeout=2)
    assert not result.ok and not result.permanent and result.detail == "connection refused"
