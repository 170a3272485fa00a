"""Triage notifications: what a notice says and the channels that carry it.

- :mod:`~neuroradix.notify.message`: :class:`Notification` (stored as JSON in the outbox);
- :mod:`~neuroradix.notify.hl7v2`: HL7 v2.5.1 ORU^R01 over MLLP;
- :mod:`~neuroradix.notify.fhir`: a FHIR R4 transaction Bundle, validated with ``fhir.resources``;
- :mod:`~neuroradix.notify.webhook`: signed JSON over HTTP;
- :mod:`~neuroradix.notify.destinations`: the destinations file and :func:`deliver`;
- :mod:`~neuroradix.notify.cli`: ``neuroradix destinations add|list|remove``.

This room imports only the package root (``errors``, ``uids``); the ledger's outbox (``jobs/``)
stores notifications and calls :func:`deliver` with its retries.
"""

from neuroradix.notify.destinations import (
    Destination,
    DestinationStore,
    check_secret_file,
    deliver,
    destinations_path,
)
from neuroradix.notify.fhir import build_bundle, send_fhir, validate_bundle, validate_resource
from neuroradix.notify.hl7v2 import build_oru, interpret_ack, parse_mllp_url, send_mllp
from neuroradix.notify.message import LEVELS, Evidence, Links, Notification, PatientInfo, level_rank
from neuroradix.notify.result import DeliveryResult
from neuroradix.notify.webhook import send_webhook, sign, verify, webhook_body

__all__ = [
    "LEVELS",
    "DeliveryResult",
    "Destination",
    "DestinationStore",
    "Evidence",
    "Links",
    "Notification",
    "PatientInfo",
    "build_bundle",
    "build_oru",
    "check_secret_file",
    "deliver",
    "destinations_path",
    "interpret_ack",
    "level_rank",
    "parse_mllp_url",
    "send_fhir",
    "send_mllp",
    "send_webhook",
    "sign",
    "validate_bundle",
    "validate_resource",
    "verify",
    "webhook_body",
]
