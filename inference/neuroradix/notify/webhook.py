"""Signed JSON webhooks.

The body is compact JSON (sorted keys, UTF-8) with the study UID, accession number, level, reasons,
evidence, policy version and sha256, kind, delivery id, links, the decision time and a
``timestamp`` (when this attempt was made) *inside* the signed bytes, so a receiver can refuse an
old body replayed at it. No patient name, id or birth date: a webhook may go to any system.

Headers: ``X-NeuroRadix-Signature: sha256=<hex HMAC-SHA256 of the raw body under the destination's
secret>``, ``X-NeuroRadix-Delivery: <delivery id>`` (the same on every retry: deduplicate on it) and
``Content-Type: application/json``. A receiver verifies the signature over the bytes it received,
before parsing them (:func:`verify` is the reference). The status classes are those of
:mod:`neuroradix.notify.http`. The standard library's ``hmac`` does the signing; httpx sends.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from typing import Any, Optional

from neuroradix.notify import http
from neuroradix.notify.message import Notification
from neuroradix.notify.result import DeliveryResult

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-NeuroRadix-Signature"
DELIVERY_HEADER = "X-NeuroRadix-Delivery"
PREFIX = "sha256="


def webhook_body(n: Notification, *, timestamp: Optional[dt.datetime] = None) -> bytes:
    """The JSON body for ``n`` (see the module docstring).

    Parameters
    ----------
    n
        The notification.
    timestamp
        When this attempt is made (aware; default: now, UTC). It is part of the signed body.
    """
    moment = timestamp or dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        raise ValueError("webhook_body: timestamp must be an aware datetime")
    data = n.to_dict()
    body: dict[str, Any] = {
        key: data[key]
        for key in (
            "delivery_id",
            "kind",
            "study_uid",
            "accession_number",
            "level",
            "reasons",
            "evidence",
            "policy_version",
            "policy_sha256",
            "decided_at",
            "links",
            "untrained_or_licence_note",
        )
    }
    body["timestamp"] = moment.astimezone(dt.UTC).isoformat(timespec="seconds")
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign(body: bytes, secret: bytes) -> str:
    """``"sha256=" + hex(HMAC-SHA256(secret, body))``.

    Parameters
    ----------
    body
        The raw bytes sent.
    secret
        The destination's shared secret (non-empty).
    """
    if not isinstance(body, bytes) or not isinstance(secret, bytes):
        raise TypeError("sign: body and secret must be bytes")
    if not secret:
        raise ValueError("sign: the secret must not be empty")
    return PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: Optional[str], secret: bytes) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant-time comparison).

    Parameters
    ----------
    body
        The raw bytes received (before any JSON parsing).
    header
        The ``X-NeuroRadix-Signature`` value, or None when it was missing.
    secret
        The shared secret.
    """
    if not header or not secret or not isinstance(header, str) or not header.startswith(PREFIX):
        return False
    expected = sign(body, secret)
    return hmac.compare_digest(expected.encode("ascii"), header.strip().lower().encode("ascii", errors="replace"))


def send_webhook(url: str, body: bytes, *, secret: bytes, delivery_id: str, timeout: float) -> DeliveryResult:
    """POST ``body`` to ``url`` with the signature and delivery id headers.

    Parameters
    ----------
    url
        ``http(s)://`` URL of the receiver.
    body
        From :func:`webhook_body`.
    secret
        The destination's shared secret.
    delivery_id
        The outbox row's id (sent as ``X-NeuroRadix-Delivery``).
    timeout
        Seconds for connecting and for each read and write.

    Returns
    -------
    DeliveryResult
        2xx delivered; 408, 429, 5xx, timeouts and connection errors retried; other 4xx permanent.
    """
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, secret),
        DELIVERY_HEADER: delivery_id,
    }
    result = http.post(url, body, headers, timeout=timeout)
    logger.info("webhook delivery %s: %s", delivery_id, result.detail)
    return result
