"""What a notification says, independent of the channel that carries it.

A :class:`Notification` is built once, when the decision is recorded, and stored as JSON in the
ledger's outbox (:meth:`Notification.to_json`); every retry rebuilds the channel's message from that
JSON (:meth:`Notification.from_json`), so a retry sends the same content under the same
``delivery_id``. The levels and their order live here because the channels need them and the
notify room may not import ``triage/``: ``urgent`` > ``priority`` > ``routine``; ``pending`` and
``not-analyzed`` are states, not ranks (the AI has no opinion yet, or none at all).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from neuroradix.errors import NotificationError
from neuroradix.uids import valid_uid

DELIVERY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # it travels in headers and HL7/FHIR identifiers
FORMAT = 1  # version of the JSON that to_json writes

LEVELS = ("urgent", "priority", "routine", "pending", "not-analyzed")
RANKED_LEVELS = ("routine", "priority", "urgent")  # ascending; the levels a destination's min_level may name
UNDECIDED_LEVELS = frozenset({"pending", "not-analyzed"})
KINDS = ("decision", "escalation", "max-wait")
COMPARATORS = (">=", "<=")
EVIDENCE_KINDS = ("finding", "measurement")


def level_rank(level: str) -> int:
    """Rank of a decided level (routine 1, priority 2, urgent 3); 0 for ``pending``/``not-analyzed``.

    Parameters
    ----------
    level
        One of :data:`LEVELS`.

    Raises
    ------
    ValueError
        ``level`` is not one of :data:`LEVELS`.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    return RANKED_LEVELS.index(level) + 1 if level in RANKED_LEVELS else 0


def _utc(value: str, name: str) -> dt.datetime:
    """Parse an ISO-8601 time with an offset (or ``Z``) into an aware UTC datetime."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be an ISO-8601 str, not {type(value).__name__}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{name} is not an ISO-8601 time: {value!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{name} must carry a UTC offset (e.g. +00:00 or Z): {value!r}")
    return parsed.astimezone(dt.UTC)


def _str(obj: object, name: str, *, optional: bool = False) -> None:
    value = getattr(obj, name)
    if optional and value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{type(obj).__name__}.{name} must be a str{' or None' if optional else ''}")


def _number(value: Any, name: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Evidence.{name} must be a float or None, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"Evidence.{name} must be finite, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class PatientInfo:
    """The patient as the study's DICOM patient module names them (any field may be empty).

    Parameters
    ----------
    id
        PatientID (0010,0020).
    name
        PatientName (0010,0010) in DICOM PN form, ``Family^Given^Middle^Prefix^Suffix``.
    birth_date
        PatientBirthDate (0010,0030), ``YYYYMMDD``.
    sex
        PatientSex (0010,0040): ``M``, ``F``, ``O`` or empty.
    """

    id: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""

    def __post_init__(self) -> None:
        for name in ("id", "name", "birth_date", "sex"):
            _str(self, name)


@dataclass(frozen=True)
class Evidence:
    """One finding or measurement that a fired rule used.

    Parameters
    ----------
    rule
        The name of the policy rule.
    name
        The finding (CT-RATE name) or measurement (its exact name in ``results.json``).
    value
        The probability or the measured value; None when the result did not carry it.
    unit
        The measurement's unit as in ``results.json`` (``"%"``, ``"HU"``, ``"mL"``); empty for a
        probability.
    threshold
        The rule's threshold; None when the rule has none.
    comparator
        ``">="`` (``at_least`` / ``probability_at_least``) or ``"<="`` (``at_most``).
    analyzer
        The analyzer the rule is scoped to, or None.
    kind
        ``"finding"`` or ``"measurement"``.
    """

    rule: str
    name: str
    value: Optional[float]
    unit: str
    threshold: Optional[float]
    comparator: str
    analyzer: Optional[str]
    kind: str

    def __post_init__(self) -> None:
        for name in ("rule", "name", "unit"):
            _str(self, name)
        _str(self, "analyzer", optional=True)
        if not self.rule or not self.name:
            raise ValueError("Evidence.rule and Evidence.name must not be empty")
        if self.comparator not in COMPARATORS:
            raise ValueError(f"Evidence.comparator must be one of {COMPARATORS}, not {self.comparator!r}")
        if self.kind not in EVIDENCE_KINDS:
            raise ValueError(f"Evidence.kind must be one of {EVIDENCE_KINDS}, not {self.kind!r}")
        object.__setattr__(self, "value", _number(self.value, "value"))
        object.__setattr__(self, "threshold", _number(self.threshold, "threshold"))

    @property
    def met(self) -> Optional[bool]:
        """Whether the value meets the threshold (None when either is missing)."""
        if self.value is None or self.threshold is None:
            return None
        return self.value >= self.threshold if self.comparator == ">=" else self.value <= self.threshold


@dataclass(frozen=True)
class Links:
    """Where a person opens the study: the worklist page, OHIF, the results archive (None: not served)."""

    worklist_url: Optional[str] = None
    ohif_url: Optional[str] = None
    results_url: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("worklist_url", "ohif_url", "results_url"):
            _str(self, name, optional=True)


@dataclass(frozen=True)
class Notification:
    """One notice about one study's triage, for one destination.

    Parameters
    ----------
    delivery_id
        The outbox row's id: the same on every retry (receivers deduplicate on it).
    kind
        ``"decision"``, ``"escalation"`` (an urgent study still unacknowledged) or ``"max-wait"``
        (a study still pending or not analyzed after the maximum wait).
    study_uid
        StudyInstanceUID.
    accession_number
        AccessionNumber (may be empty).
    patient
        The DICOM patient module's identity fields.
    level
        One of :data:`LEVELS`.
    reasons
        The names of the rules that fired (or why the study is not analyzed).
    evidence
        The findings and measurements those rules used.
    policy_version, policy_sha256
        The policy that decided.
    decided_at, created_at
        ISO-8601 times with an offset: when the level was decided, when this notice was created.
    links
        URLs for people.
    untrained_or_licence_note
        A note every channel must carry (untrained weights, a model licence), or None.
    """

    delivery_id: str
    kind: str
    study_uid: str
    accession_number: str
    patient: PatientInfo
    level: str
    reasons: tuple[str, ...]
    evidence: tuple[Evidence, ...]
    policy_version: str
    policy_sha256: str
    decided_at: str
    created_at: str
    links: Links = field(default_factory=Links)
    untrained_or_licence_note: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("delivery_id", "kind", "study_uid", "accession_number", "level", "policy_version"):
            _str(self, name)
        _str(self, "policy_sha256")
        _str(self, "untrained_or_licence_note", optional=True)
        if not DELIVERY_ID.fullmatch(self.delivery_id):
            raise ValueError("Notification.delivery_id must be 1-128 of A-Z a-z 0-9 . _ : -")
        if self.kind not in KINDS:
            raise ValueError(f"Notification.kind must be one of {KINDS}, not {self.kind!r}")
        if self.level not in LEVELS:
            raise ValueError(f"Notification.level must be one of {LEVELS}, not {self.level!r}")
        try:
            valid_uid(self.study_uid)
        except ValueError as exc:
            raise ValueError(f"Notification.study_uid {exc}") from None
        if not isinstance(self.patient, PatientInfo):
            raise TypeError("Notification.patient must be a PatientInfo")
        if not isinstance(self.links, Links):
            raise TypeError("Notification.links must be a Links")
        if not isinstance(self.reasons, tuple) or any(not isinstance(r, str) for r in self.reasons):
            raise TypeError("Notification.reasons must be a tuple of str")
        if not isinstance(self.evidence, tuple) or any(not isinstance(e, Evidence) for e in self.evidence):
            raise TypeError("Notification.evidence must be a tuple of Evidence")
        _utc(self.decided_at, "Notification.decided_at")
        _utc(self.created_at, "Notification.created_at")

    @property
    def decided_at_utc(self) -> dt.datetime:
        """:attr:`decided_at` as an aware UTC datetime."""
        return _utc(self.decided_at, "decided_at")

    @property
    def created_at_utc(self) -> dt.datetime:
        """:attr:`created_at` as an aware UTC datetime."""
        return _utc(self.created_at, "created_at")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what :meth:`to_json` writes)."""
        return {
            "format": FORMAT,
            "delivery_id": self.delivery_id,
            "kind": self.kind,
            "study_uid": self.study_uid,
            "accession_number": self.accession_number,
            "patient": {
                "id": self.patient.id,
                "name": self.patient.name,
                "birth_date": self.patient.birth_date,
                "sex": self.patient.sex,
            },
            "level": self.level,
            "reasons": list(self.reasons),
            "evidence": [
                {
                    "rule": e.rule,
                    "name": e.name,
                    "value": e.value,
                    "unit": e.unit,
                    "threshold": e.threshold,
                    "comparator": e.comparator,
                    "analyzer": e.analyzer,
                    "kind": e.kind,
                }
                for e in self.evidence
            ],
            "policy_version": self.policy_version,
            "policy_sha256": self.policy_sha256,
            "decided_at": self.decided_at,
            "created_at": self.created_at,
            "links": {
                "worklist_url": self.links.worklist_url,
                "ohif_url": self.links.ohif_url,
                "results_url": self.links.results_url,
            },
            "untrained_or_licence_note": self.untrained_or_licence_note,
        }

    def to_json(self) -> str:
        """The notification as JSON (sorted keys); :meth:`from_json` gives back an equal object."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Notification:
        """Build from :meth:`to_dict`'s form.

        Raises
        ------
        NotificationError
            A key is missing or unknown, or a value is of the wrong type or out of range.
        """
        try:
            if not isinstance(data, dict):
                raise TypeError("a notification must be a JSON object")
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown notification format {data.get('format')!r} (expected {FORMAT})")
            expected = set(cls.__dataclass_fields__) | {"format"}
            if set(data) != expected:
                raise ValueError(f"keys differ from a notification's: {sorted(set(data) ^ expected)}")
            return cls(
                delivery_id=data["delivery_id"],
                kind=data["kind"],
                study_uid=data["study_uid"],
                accession_number=data["accession_number"],
                patient=PatientInfo(**data["patient"]),
                level=data["level"],
                reasons=tuple(data["reasons"]),
                evidence=tuple(Evidence(**e) for e in data["evidence"]),
                policy_version=data["policy_version"],
                policy_sha256=data["policy_sha256"],
                decided_at=data["decided_at"],
                created_at=data["created_at"],
                links=Links(**data["links"]),
                untrained_or_licence_note=data["untrained_or_licence_note"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NotificationError(f"not a valid notification: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> Notification:
        """Parse :meth:`to_json`'s output.

        Raises
        ------
        NotificationError
            The text is not JSON or not a valid notification.
        """
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise NotificationError(f"notification JSON does not parse: {exc}") from exc
        return cls.from_dict(data)
