"""Deterministic DICOM UIDs.

Outputs are identified by what produced them, so a rerun stores the same instances again
(Orthanc keeps one copy) instead of a second series. pydicom's ``generate_uid`` with entropy
sources still returns a random UID, so the derivation is done here: ``2.25.`` followed by the
integer of a UUID version 5 of the inputs (ISO/IEC 9834-8, as DICOM PS3.5 B.2 allows).

The node's *output* UIDs are keyed: with ``key`` (the per-node secret ``UID_KEY`` in
``var/secrets.env``) the UUID is built from an HMAC-SHA256 of the inputs instead (version 8,
RFC 9562), so nobody without the key can compute the SOP Instance UID of a result before the
node stores it; the same inputs and key still give the same UID, so reruns stay idempotent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Optional

_NAMESPACE = uuid.UUID("6f3c1f8e-6a52-5a4e-9d43-2b0c7f5e8a11")
_VERSION_8 = 0x8 << 76
_RFC_VARIANT = 0x2 << 62
_VERSION_MASK = ~(0xF << 76) & ~(0x3 << 62) & ((1 << 128) - 1)


def derive_uid(*parts: str, key: Optional[str] = None) -> str:
    """Return a UID that depends only on ``parts`` (and ``key``), at most 64 characters.

    Parameters
    ----------
    *parts:
        What identifies the object (strings).
    key:
        A secret; with it the UID is an HMAC of ``parts`` that cannot be computed without the
        key. None (or "") gives the public, unkeyed UUID-5 derivation.
    """
    if not parts or any(not isinstance(p, str) for p in parts):
        raise TypeError("derive_uid needs one or more str parts")
    if key is not None and not isinstance(key, str):
        raise TypeError("derive_uid: key must be a str or None")
    name = "\x1f".join(parts)
    if not key:
        return "2.25." + str(uuid.uuid5(_NAMESPACE, name).int)
    digest = hmac.new(key.encode("utf-8"), name.encode("utf-8"), hashlib.sha256).digest()
    value = (int.from_bytes(digest[:16], "big") & _VERSION_MASK) | _VERSION_8 | _RFC_VARIANT
    return "2.25." + str(value)


def short_hash(uid: str) -> str:
    """A short, non-reversible tag for logs: never log patient or study identifiers."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:10]


UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(value: str) -> str:
    """Return ``value`` if it is a DICOM UID (PS3.5 9.1), else raise ValueError saying why."""
    if not isinstance(value, str) or len(value) > 64 or not UID_PATTERN.match(value):
        raise ValueError("must be a DICOM UID: digits and dots, at most 64 characters, no leading zeros")
    return value
