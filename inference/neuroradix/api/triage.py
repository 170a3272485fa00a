"""Triage routes: the worklist, a person's acknowledgement, and a study's audit trail.

``GET /v1/worklist`` (reader token): studies by level (urgent, priority, routine, not-analyzed,
pending), then by time waiting since hand-off, oldest first; ``?level=`` filters.
``POST /v1/studies/{uid}/acknowledge`` (admin token): who read it and when; releases a held level.
``GET /v1/studies/{uid}/timeline`` (reader token): received, stable, claimed, analyzed, decided,
labelled, each delivery attempt and its answer, acknowledged -- in time order, no patient data.
"""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from neuroradix.api.deps import get_ledger
from neuroradix.api.jobs import checked_uid
from neuroradix.jobs.ledger import Ledger, utcnow
from neuroradix.jobs.triage_store import StudyTriage, TriageStore
from neuroradix.triage.decide import Decision, acknowledge
from neuroradix.triage.policy import Level
from neuroradix.uids import short_hash

logger = logging.getLogger(__name__)

router = APIRouter(tags=["triage"])

_ORDER = {level.value: -level.rank for level in Level}  # urgent first ... pending last


class WorklistItem(BaseModel):
    """One study on the worklist."""

    study_uid: str
    level: str
    reasons: list[str]
    held: bool
    policy_version: Optional[str]
    label: Optional[str]
    received_at: str
    decided_at: Optional[str]
    labelled_at: Optional[str]
    waiting_seconds: float
    acknowledged_by: Optional[str]
    acknowledged_at: Optional[str]
    notifications: dict[str, int]


class Acknowledgement(BaseModel):
    """Who acknowledges a study (a person's name or initials as the site records readers)."""

    by: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9 .,'_@-]+$")


def _iso(value) -> Optional[str]:  # noqa: ANN001 - datetime or None
    return value.isoformat() if value is not None else None


def worklist_item(row: StudyTriage, notifications: dict[str, int]) -> WorklistItem:
    """The worklist's view of a study's triage row."""
    now = utcnow()
    return WorklistItem(
        study_uid=row.study_uid,
        level=row.level,
        reasons=list(row.decision.get("reasons", [])),
        held=bool(row.decision.get("held", False)),
        policy_version=row.decision.get("policy_version"),
        label=row.label_applied,
        received_at=row.received_at.isoformat(),
        decided_at=_iso(row.decided_at),
        labelled_at=_iso(row.labelled_at),
        waiting_seconds=round((now - row.received_at).total_seconds(), 1),
        acknowledged_by=row.acknowledged_by,
        acknowledged_at=_iso(row.acknowledged_at),
        notifications=notifications,
    )


@router.get("/v1/worklist", response_model=list[WorklistItem])
def worklist(level: Optional[Level] = None, ledger: Ledger = Depends(get_ledger)) -> list[WorklistItem]:
    """Studies by triage level, then by waiting time (longest first)."""
    store = TriageStore(ledger)
    rows = store.studies(level=level.value if level is not None else None)
    rows.sort(key=lambda r: (_ORDER.get(r.level, 0), r.received_at))
    counts = store.delivery_counts_by_study()
    return [worklist_item(r, counts.get(r.study_uid, {})) for r in rows]


@router.post("/v1/studies/{study_uid}/acknowledge", response_model=WorklistItem)
def acknowledge_study(study_uid: str, body: Acknowledgement, ledger: Ledger = Depends(get_ledger)) -> WorklistItem:
    """Record that a person has seen the study; a level held above the latest result is released."""
    uid = checked_uid(study_uid)
    store = TriageStore(ledger)
    row = store.get(uid)
    if row is None:
        raise HTTPException(404, "the node has no triage record of this study")
    now = utcnow()
    decision = row.decision
    if decision:
        decision = acknowledge(Decision.from_json(decision), body.by, now).to_json()
    store.acknowledge(uid, body.by, decision, now=now)
    logger.info("study %s acknowledged", short_hash(uid))
    updated = store.get(uid)
    assert updated is not None  # it was there a moment ago and rows are never deleted
    return worklist_item(updated, {})


@router.get("/v1/studies/{study_uid}/timeline")
def timeline(study_uid: str, ledger: Ledger = Depends(get_ledger)) -> dict:
    """The study's audit trail: job steps from the ledger and triage events, in time order."""
    uid = checked_uid(study_uid)
    events = TriageStore(ledger).events(uid)
    for job in ledger.find(uid):
        events.append({"at": job.created_at.isoformat(), "event": "stable", "job_id": job.id, "trigger": job.trigger})
        if job.started_at is not None:
            events.append({"at": job.started_at.isoformat(), "event": "claimed", "job_id": job.id})
        if job.finished_at is not None:
            events.append(
                {
                    "at": job.finished_at.isoformat(),
                    "event": "analyzed",
                    "job_id": job.id,
                    "state": job.state.value,
                    "error_class": job.error_class,
                }
            )
    if not events:
        raise HTTPException(404, "the node has no record of this study")
    events.sort(key=lambda e: e["at"])
    return {"study_uid": uid, "events": events}
