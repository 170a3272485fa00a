"""FHIR R4 triage results: one transaction ``Bundle`` POSTed to the receiver's base URL.

The bundle holds a ``DiagnosticReport`` (status ``preliminary``, LOINC 18748-4 "Diagnostic imaging
study", the level in ``conclusion`` and ``conclusionCode``) and its ``Observation`` results (one for
the level, one per evidence item, status ``preliminary``, interpretations from
``v3-ObservationInterpretation``: urgent ``AA``, priority ``A``, routine ``N``; evidence ``H``/``L``
for measurements, ``A`` for findings, ``N`` when the threshold is not met). Nothing else is created:

- the patient is a logical reference by identifier (PatientID; ``system`` only when the caller
  knows the issuer), the ImagingStudy one by ``{"system": "urn:dicom:uid", "value":
  "urn:oid:<study uid>"}`` and the order by its accession number (``basedOn``, type ``ACSN``);
- every entry's ``fullUrl`` is a ``urn:uuid:`` derived from the delivery id, and every entry is a
  conditional create (``ifNoneExist`` on an identifier derived from the delivery id), so a retry
  after a lost answer does not create a second report.

Every resource, and then the bundle, is validated with ``fhir.resources``' R4 models
(``fhir.resources.R4B``: required elements, types, unknown fields) before anything is sent; those
models do not check value-set bindings, so the few codes used here (statuses, bundle type, request
methods) are checked by :func:`validate_bundle` itself. A bundle that fails raises
:class:`~neuroradix.errors.NotificationError`.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Optional
from urllib.parse import quote

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from neuroradix.errors import NotificationError
from neuroradix.notify import http
from neuroradix.notify.message import Evidence, Notification
from neuroradix.notify.result import DeliveryResult

logger = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("3d1f0c52-7b1e-5c8a-9a41-6e2f8d0b7c19")  # the node's notification entries
NOTIFICATION_SYSTEM = "urn:neuroradix:notification"  # identifiers derived from delivery ids
LEVEL_SYSTEM = "urn:neuroradix:triage-level"
EVIDENCE_SYSTEM = "urn:neuroradix:evidence"
CODE_SYSTEM = "urn:neuroradix:code"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
UCUM = "http://unitsofmeasure.org"
UCUM_CODES = {"%": "%", "HU": "[hnsf'U]", "mL": "mL", "ml": "mL", "L": "L", "mm": "mm", "cm": "cm", "mm3": "mm3"}
LEVEL_INTERPRETATION = {
    "urgent": ("AA", "Critical abnormal"),
    "priority": ("A", "Abnormal"),
    "routine": ("N", "Normal"),
}
FLAG_TEXT = {"H": "High", "L": "Low", "A": "Abnormal", "N": "Normal"}
LEVEL_TEXT = {
    "urgent": "Urgent",
    "priority": "Priority",
    "routine": "Routine",
    "pending": "Pending (not analyzed yet)",
    "not-analyzed": "Not analyzed",
}
MODELS = {"DiagnosticReport": DiagnosticReport, "Observation": Observation}
STATUSES = {
    "Observation": {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error"},
    "DiagnosticReport": {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended"},
}
REPORT_CATEGORY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}]
}
OBSERVATION_CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging",
            "display": "Imaging",
        }
    ]
}


def entry_uuid(delivery_id: str, role: str) -> str:
    """``urn:uuid:`` of the entry ``role`` (``report``, ``level``, ``evidence-0`` ...) of a delivery.

    Parameters
    ----------
    delivery_id
        The outbox row's stable id.
    role
        Which entry of the bundle.
    """
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{delivery_id}/{role}')}"


def _search_value(text: str) -> str:
    """A token value for ``ifNoneExist``: FHIR search escaping (``\\ | , $``), then percent-encoding."""
    for ch in ("\\", "|", ",", "$"):
        text = text.replace(ch, "\\" + ch)
    return quote(text, safe="")


def _entry(resource: dict[str, Any], full_url: str, identifier: str) -> dict[str, Any]:
    kind = resource["resourceType"]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": kind,
            "ifNoneExist": f"identifier={NOTIFICATION_SYSTEM}|{_search_value(identifier)}",
        },
    }


def _subject(n: Notification, patient_system: Optional[str]) -> Optional[dict[str, Any]]:
    if not n.patient.id.strip():
        return None
    identifier: dict[str, Any] = {"value": n.patient.id.strip()}
    if patient_system:
        identifier["system"] = patient_system
    return {"type": "Patient", "identifier": identifier}


def _study_reference(n: Notification) -> dict[str, Any]:
    return {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{n.study_uid}"}}


def _flag(item: Evidence) -> Optional[str]:
    met = item.met
    if met is None:
        return None
    if not met:
        return "N"
    if item.kind == "finding":
        return "A"
    return "H" if item.comparator == ">=" else "L"


def _interpretation(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}]


def _quantity(value: float, unit: str) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity["unit"] = unit
        if unit in UCUM_CODES:
            quantity["system"] = UCUM
            quantity["code"] = UCUM_CODES[unit]
    return quantity


def _common(
    n: Notification, subject: Optional[dict[str, Any]], identifier: str, category: dict[str, Any] = OBSERVATION_CATEGORY
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "identifier": [{"system": NOTIFICATION_SYSTEM, "value": identifier}],
        "status": "preliminary",
        "category": [category],
        "effectiveDateTime": n.decided_at,
        "issued": n.decided_at,
    }
    if subject is not None:
        resource["subject"] = subject
    return resource


def _level_observation(n: Notification, subject: Optional[dict[str, Any]]) -> dict[str, Any]:
    resource = {
        "resourceType": "Observation",
        **_common(n, subject, f"{n.delivery_id}/level"),
        "code": {"coding": [{"system": CODE_SYSTEM, "code": "triage-level"}], "text": "AI triage level"},
        "valueCodeableConcept": {
            "coding": [{"system": LEVEL_SYSTEM, "code": n.level, "display": LEVEL_TEXT[n.level]}],
            "text": LEVEL_TEXT[n.level],
        },
        "derivedFrom": [_study_reference(n)],
    }
    if n.level in LEVEL_INTERPRETATION:
        resource["interpretation"] = _interpretation(*LEVEL_INTERPRETATION[n.level])
    notes = [f"Rule fired: {reason}" for reason in n.reasons]
    notes.append(f"Policy {n.policy_version} (sha256 {n.policy_sha256}); notice kind: {n.kind}")
    if n.untrained_or_licence_note:
        notes.append(n.untrained_or_licence_note)
    resource["note"] = [{"text": text} for text in notes]
    return resource


def _evidence_observation(
    n: Notification, index: int, item: Evidence, subject: Optional[dict[str, Any]]
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        **_common(n, subject, f"{n.delivery_id}/evidence-{index}"),
        "code": {
            "coding": [{"system": EVIDENCE_SYSTEM, "code": f"{item.kind}:{' '.join(item.name.split())}"}],
            "text": item.name,
        },
        "derivedFrom": [_study_reference(n)],
        "note": [{"text": f"Rule: {item.rule}" + (f" (analyzer {item.analyzer})" if item.analyzer else "")}],
    }
    if item.value is None:
        resource["dataAbsentReason"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}]
        }
    else:
        resource["valueQuantity"] = _quantity(item.value, item.unit)
    if item.threshold is not None:
        bound = _quantity(item.threshold, item.unit)
        # The range of values that do not fire the rule: below an at_least threshold, above an at_most one.
        resource["referenceRange"] = [{"high" if item.comparator == ">=" else "low": bound}]
    flag = _flag(item)
    if flag is not None:
        resource["interpretation"] = _interpretation(flag, FLAG_TEXT[flag])
    if item.analyzer:
        resource["method"] = {"text": item.analyzer}
    return resource


def _conclusion(n: Notification) -> str:
    prefix = {"escalation": "ESCALATION: ", "max-wait": "MAXIMUM WAIT EXCEEDED: "}.get(n.kind, "")
    text = f"{prefix}AI triage level {n.level}"
    if n.reasons:
        text += " (" + "; ".join(n.reasons) + ")"
    text += f". Policy {n.policy_version}."
    if n.untrained_or_licence_note:
        text += " " + n.untrained_or_licence_note
    return text


def build_bundle(n: Notification, *, patient_system: Optional[str] = None) -> dict[str, Any]:
    """The FHIR R4 transaction Bundle for ``n``, validated (see the module docstring).

    Parameters
    ----------
    n
        The notification.
    patient_system
        ``Identifier.system`` of the patient's id (the issuer), when the site knows it.

    Returns
    -------
    dict
        The bundle as JSON-able data; the same notification always gives the same bundle.

    Raises
    ------
    NotificationError
        A resource or the bundle does not validate.
    """
    subject = _subject(n, patient_system)
    observations = [_level_observation(n, subject)]
    observations += [_evidence_observation(n, i, item, subject) for i, item in enumerate(n.evidence)]
    roles = ["level"] + [f"evidence-{i}" for i in range(len(n.evidence))]
    urls = [entry_uuid(n.delivery_id, role) for role in roles]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        **_common(n, subject, n.delivery_id, REPORT_CATEGORY),
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}],
            "text": "AI triage of chest CT",
        },
        "imagingStudy": [_study_reference(n)],
        "result": [{"reference": url, "type": "Observation"} for url in urls],
        "conclusion": _conclusion(n),
        "conclusionCode": [{"coding": [{"system": LEVEL_SYSTEM, "code": n.level, "display": LEVEL_TEXT[n.level]}]}],
    }
    if n.accession_number.strip():
        report["basedOn"] = [
            {
                "type": "ServiceRequest",
                "identifier": {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                    "value": n.accession_number.strip(),
                },
            }
        ]
    entries = [_entry(report, entry_uuid(n.delivery_id, "report"), n.delivery_id)]
    for url, resource in zip(urls, observations):
        entries.append(_entry(resource, url, resource["identifier"][0]["value"]))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return validate_bundle(bundle)


def validate_resource(resource: dict[str, Any]) -> None:
    """Validate one DiagnosticReport or Observation with the R4 model and its status code.

    Parameters
    ----------
    resource
        The resource as JSON-able data.

    Raises
    ------
    NotificationError
        It does not validate (the message names the resource type and the first problems).
    """
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(kind, str) or kind not in MODELS:
        raise NotificationError(f"unexpected FHIR resource type {kind!r} (expected one of {sorted(MODELS)})")
    model: Any = MODELS[kind]  # fhir.resources' models are pydantic models behind a metaclass mypy cannot see
    try:
        model.model_validate(resource)
    except (ValidationError, ValueError, TypeError) as exc:
        raise NotificationError(f"invalid FHIR {kind}: {_short(exc)}") from exc
    if resource.get("status") not in STATUSES[kind]:
        raise NotificationError(f"invalid FHIR {kind}: status {resource.get('status')!r} is not in its value set")


def validate_bundle(bundle: dict[str, Any]) -> dict[str, Any]:
    """Validate every resource, then the transaction bundle as a whole; return ``bundle``.

    Parameters
    ----------
    bundle
        A transaction Bundle as JSON-able data.

    Raises
    ------
    NotificationError
        A resource, an entry's request or the bundle does not validate, or it is not JSON-able.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
        raise NotificationError("a notification bundle must be a FHIR Bundle of type transaction")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise NotificationError("the notification bundle has no entries")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise NotificationError(f"bundle entry {index} is not an object")
        validate_resource(entry.get("resource"))  # type: ignore[arg-type]
        request = entry.get("request") or {}
        if request.get("method") not in ("POST", "PUT") or not str(entry.get("fullUrl", "")).startswith("urn:uuid:"):
            raise NotificationError(f"bundle entry {index} needs a urn:uuid fullUrl and a POST or PUT request")
    try:
        json.dumps(bundle, allow_nan=False)
        Bundle.model_validate(bundle)
    except (ValidationError, ValueError, TypeError) as exc:
        raise NotificationError(f"invalid FHIR Bundle: {_short(exc)}") from exc
    return bundle


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]]
        return "; ".join(problems)
    return " ".join(str(exc).split())[:200]


def send_fhir(
    base_url: str, bundle: dict[str, Any], *, timeout: float, auth_header: Optional[str] = None
) -> DeliveryResult:
    """POST ``bundle`` (``application/fhir+json``) to the FHIR server's base URL.

    Parameters
    ----------
    base_url
        The server's base URL (a transaction is POSTed to the base itself).
    bundle
        A bundle from :func:`build_bundle`.
    timeout
        Seconds for connecting and for each read and write.
    auth_header
        The ``Authorization`` header's value (e.g. ``"Bearer <token>"``), or None.

    Returns
    -------
    DeliveryResult
        2xx delivered; 408, 429, 5xx, timeouts and connection errors retried; other 4xx permanent.
    """
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if auth_header:
        headers["Authorization"] = auth_header
    body = json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    result = http.post(base_url, body, headers, timeout=timeout)
    logger.info("FHIR delivery: %s", result.detail)
    return result
