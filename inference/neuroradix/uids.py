"""Deterministic DICOM UIDs.

Outputs are identified by what produced them, so a rerun stores the same instances again
(Orthanc keeps one copy) instead of a second series. pydicom's ``generate_uid`` with entropy
sources still returns a random UID, so the derivation is done here: ``2.25.`` followed by the
integer of a UUID version 5 of the inputs (ISO/IEC 9834-8, as DICOM PS3.5 B.2 allows).
"""
from __future__ import annotations

import hashlib
import re
import uuid

_NAMESPACE = uuid.UUID("6f3c1f8e-6a52-5a4e-9d43-2b0c7f5e8a11")


def derive_uid(*parts: str) -> str:
    """Return a UID that depends only on ``parts`` (at most 64 characters)."""
    if not parts or any(not isinstance(p, str) for p in parts):
        raise TypeError("derive_uid needs one or more str parts")
    name = "\x1f".join(parts)
    return "2.25." + str(uuid.uuid5(_NAMESPACE, name).int)


def short_hash(uid: str) -> str:
    """A short, non-reversible tag for logs: never log patient or study identifiers."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:10]


UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(value: str) -> str:
    """Return ``value`` if it is a DICOM UID (PS3.5 9.1), else raise ValueError saying why."""
    if not isinstance(value, str) or len(value) > 64 or not UID_PATTERN.match(value):
        raise ValueError("must be a DICOM UID: digits and dots, at most 64 characters, no leading zeros")
    return value
