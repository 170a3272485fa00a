"""Triage in the ledger: each study's current decision, the notification outbox and the audit trail.

Three tables beside ``jobs`` (migration 0005), on the ledger's engine, so that a decision and the
notifications it causes are written in **one transaction**: a killed process either wrote both or
neither, and the next sweep decides again.

- ``triage_studies``: one row per study, its level (``pending`` from hand-off, then the decided
  level), the decision as JSON, the label wanted in the PACS and the label last applied there, who
  acknowledged it, and when an escalation or a maximum-wait notice went out.
- ``triage_deliveries``: the outbox. One row per (study, decision, destination, kind) with a stable
  ``delivery_id`` (the receiver sees the same id on every retry) and the notification's JSON.
  Claimed with a lease like jobs; retried by time; ``dead`` after the retry window.
- ``triage_events``: append-only audit trail (``received``, ``decided``, ``labelled``, ``delivery``,
  ``acknowledged``, ``escalated``...). Details hold levels, rule names, destinations and receivers'
  short answers, never patient data.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import sqlalchemy as sa

from neuroradix.jobs.ledger import (
    Job,
    JobState,
    Ledger,
    _aware,
    jobs,
    triage_deliveries,
    triage_events,
    triage_studies,
    utcnow,
)

logger = logging.getLogger(__name__)

PENDING = "pending"  # the triage level of a study handed off and not decided yet


class DeliveryState(str, enum.Enum):
    """Where a notification is: waiting (first try or a retry), delivered, or dead-lettered."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


def delivery_id(study_uid: str, decision_seq: int, destination: str, kind: str) -> str:
    """The stable id of one notification: the same on every retry, different for each decision.

    Parameters
    ----------
    study_uid, decision_seq, destination, kind
        What identifies the notification: the study, which of its decisions, where it goes, and
        whether it is the decision itself, an escalation or a maximum-wait notice.
    """
    digest = hashlib.sha256(f"{study_uid}\x00{decision_seq}\x00{destination}\x00{kind}".encode()).hexdigest()
    return f"nrx-{digest[:32]}"


@dataclass(frozen=True)
class StudyTriage:
    """A study's triage row: its level, decision and where its label and notices stand."""

    study_uid: str
    level: str
    decision: dict
    decision_seq: int
    decided_job_id: Optional[int]
    decided_job_finished_at: Optional[dt.datetime]
    label_wanted: Optional[str]
    label_applied: Optional[str]
    received_at: dt.datetime
    decided_at: Optional[dt.datetime]
    labelled_at: Optional[dt.datetime]
    acknowledged_by: Optional[str]
    acknowledged_at: Optional[dt.datetime]
    escalated_at: Optional[dt.datetime]
    max_wait_notified_at: Optional[dt.datetime]

    @classmethod
    def from_row(cls, row: Any) -> StudyTriage:
        """Build one from a ``triage_studies`` row."""
        m = row._mapping
        return cls(
            study_uid=m["study_uid"],
            level=m["level"],
            decision=json.loads(m["decision"] or "{}"),
            decision_seq=m["decision_seq"],
            decided_job_id=m["decided_job_id"],
            decided_job_finished_at=_aware(m["decided_job_finished_at"]),
            label_wanted=m["label_wanted"],
            label_applied=m["label_applied"],
            received_at=_aware(m["received_at"]),
            decided_at=_aware(m["decided_at"]),
            labelled_at=_aware(m["labelled_at"]),
            acknowledged_by=m["acknowledged_by"],
            acknowledged_at=_aware(m["acknowledged_at"]),
            escalated_at=_aware(m["escalated_at"]),
            max_wait_notified_at=_aware(m["max_wait_notified_at"]),
        )


@dataclass(frozen=True)
class Delivery:
    """One outbox row: a notification for one destination and its delivery record."""

    id: int
    delivery_id: str
    study_uid: str
    destination: str
    kind: str
    payload: dict
    state: DeliveryState
    attempts: int
    next_attempt_at: dt.datetime
    last_detail: Optional[str]
    created_at: dt.datetime
    delivered_at: Optional[dt.datetime]

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        """Build one from a ``triage_deliveries`` row."""
        m = row._mapping
        return cls(
            id=m["id"],
            delivery_id=m["delivery_id"],
            study_uid=m["study_uid"],
            destination=m["destination"],
            kind=m["kind"],
            payload=json.loads(m["payload"]),
            state=DeliveryState(m["state"]),
            attempts=m["attempts"],
            next_attempt_at=_aware(m["next_attempt_at"]),
            last_detail=m["last_detail"],
            created_at=_aware(m["created_at"]),
            delivered_at=_aware(m["delivered_at"]),
        )

    def to_dict(self) -> dict:
        """JSON-able view without the payload (which carries patient data)."""
        return {
            "delivery_id": self.delivery_id,
            "destination": self.destination,
            "kind": self.kind,
            "state": self.state.value,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat(),
            "last_detail": self.last_detail,
            "created_at": self.created_at.isoformat(),
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
        }


@dataclass(frozen=True)
class Outgoing:
    """A notification to put into the outbox with a decision: where it goes and what it says.

    ``payload`` is built per delivery id (``build(delivery_id) -> dict``) so that the id inside the
    message is the row's id.
    """

    destination: str
    kind: str
    build: Callable[[str], dict]


@dataclass(frozen=True)
class DecisionRecord:
    """What :meth:`TriageStore.record_decision` writes for a study besides its outbox rows."""

    level: str
    decision: dict
    label_wanted: Optional[str]
    job_id: Optional[int] = None
    job_finished_at: Optional[dt.datetime] = None


class TriageStore:
    """Reads and writes the triage tables through a :class:`~neuroradix.jobs.ledger.Ledger`.

    Every write goes through the ledger's retry of operational errors (``Ledger._write``).

    Parameters
    ----------
    ledger
        The node's ledger (its engine; its schema already upgraded to revision 0005 or later).
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.engine = ledger.engine

    # --- events ------------------------------------------------------------------------------
    @staticmethod
    def _event(conn: sa.Connection, study_uid: str, event: str, now: dt.datetime, **detail: Any) -> None:
        conn.execute(
            triage_events.insert().values(
                study_uid=study_uid, at=now, event=event, detail=json.dumps(detail, sort_keys=True)
            )
        )

    def add_event(self, study_uid: str, event: str, *, now: Optional[dt.datetime] = None, **detail: Any) -> None:
        """Append one event to a study's audit trail."""
        at = now or utcnow()

        def _add() -> None:
            with self.engine.begin() as conn:
                self._event(conn, study_uid, event, at, **detail)

        self.ledger._write("triage event", _add)

    # --- studies -----------------------------------------------------------------------------
    def get(self, study_uid: str) -> Optional[StudyTriage]:
        """The study's triage row, or None when it was never handed off."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(triage_studies).where(triage_studies.c.study_uid == study_uid)).first()
        return StudyTriage.from_row(row) if row is not None else None

    def mark_received(self, study_uid: str, received_at: dt.datetime, label: Optional[str]) -> bool:
        """Create the study's row as ``pending`` (from its hand-off); False when it already has one."""
        now = utcnow()

        def _insert() -> bool:
            with self.engine.begin() as conn:
                if conn.execute(
                    sa.select(triage_studies.c.study_uid).where(triage_studies.c.study_uid == study_uid)
                ).first():
                    return False
                try:
                    with conn.begin_nested():
                        conn.execute(
                            triage_studies.insert().values(
                                study_uid=study_uid,
                                level=PENDING,
                                decision="{}",
                                decision_seq=0,
                                label_wanted=label,
                                received_at=received_at,
                                updated_at=now,
                            )
                        )
                except sa.exc.IntegrityError:  # a concurrent sweep inserted it
                    return False
                self._event(conn, study_uid, "received", received_at)
                return True

        return self.ledger._write("triage receive", _insert)

    def record_decision(
        self, study_uid: str, record: DecisionRecord, outgoing: Sequence[Outgoing], *, now: dt.datetime
    ) -> list[str]:
        """Store a decision and its notifications in one transaction; returns the new delivery ids.

        Compare-and-set on the study's decision counter: a concurrent decision for the same study
        makes this one give up (the sweep that lost reads the new state next time).
        """

        def _record() -> list[str]:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(triage_studies.c.decision_seq, triage_studies.c.level).where(
                        triage_studies.c.study_uid == study_uid
                    )
                ).first()
                if row is None:
                    conn.execute(
                        triage_studies.insert().values(
                            study_uid=study_uid,
                            level=PENDING,
                            decision="{}",
                            decision_seq=0,
                            received_at=record.job_finished_at or now,
                            updated_at=now,
                        )
                    )
                    seq, old_level = 0, PENDING
                else:
                    seq, old_level = row.decision_seq, row.level
                new_seq = seq + 1
                # A new level starts its own escalation and maximum-wait clocks.
                renewed = {"escalated_at": None, "max_wait_notified_at": None} if record.level != old_level else {}
                updated = conn.execute(
                    triage_studies.update()
                    .where(triage_studies.c.study_uid == study_uid, triage_studies.c.decision_seq == seq)
                    .values(
                        level=record.level,
                        decision=json.dumps(record.decision, sort_keys=True),
                        decision_seq=new_seq,
                        decided_job_id=record.job_id,
                        decided_job_finished_at=record.job_finished_at,
                        label_wanted=record.label_wanted,
                        decided_at=now,
                        updated_at=now,
                        **renewed,
                    )
                )
                if updated.rowcount != 1:
                    return []
                self._event(
                    conn,
                    study_uid,
                    "decided",
                    now,
                    level=record.level,
                    computed_level=record.decision.get("computed_level"),
                    reasons=list(record.decision.get("reasons", [])),
                    policy_version=record.decision.get("policy_version"),
                    policy_sha256=record.decision.get("policy_sha256"),
                    mode=record.decision.get("mode"),
                    held=record.decision.get("held", False),
                )
                return self._enqueue(conn, study_uid, new_seq, outgoing, now)

        return self.ledger._write("triage decision", _record)

    def _enqueue(
        self, conn: sa.Connection, study_uid: str, seq: int, outgoing: Sequence[Outgoing], now: dt.datetime
    ) -> list[str]:
        ids = []
        for item in outgoing:
            did = delivery_id(study_uid, seq, item.destination, item.kind)
            conn.execute(
                triage_deliveries.insert().values(
                    delivery_id=did,
                    study_uid=study_uid,
                    destination=item.destination,
                    kind=item.kind,
                    payload=json.dumps(item.build(did), sort_keys=True),
                    state=DeliveryState.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
            self._event(conn, study_uid, "queued", now, delivery_id=did, destination=item.destination, kind=item.kind)
            ids.append(did)
        return ids

    def record_notice(self, study_uid: str, kind: str, outgoing: Sequence[Outgoing], *, now: dt.datetime) -> bool:
        """Queue an escalation (``kind="escalation"``) or a maximum-wait notice once per decision.

        Sets ``escalated_at`` / ``max_wait_notified_at`` with a compare-and-set in the same
        transaction as the outbox rows, so each notice is queued exactly once.
        """
        column = triage_studies.c.escalated_at if kind == "escalation" else triage_studies.c.max_wait_notified_at

        def _notice() -> bool:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(triage_studies.c.decision_seq).where(
                        triage_studies.c.study_uid == study_uid, column.is_(None)
                    )
                ).first()
                if row is None:
                    return False
                done = conn.execute(
                    triage_studies.update()
                    .where(triage_studies.c.study_uid == study_uid, column.is_(None))
                    .values({column.name: now, "updated_at": now})
                )
                if done.rowcount != 1:
                    return False
                self._event(conn, study_uid, "escalated" if kind == "escalation" else "max-wait", now)
                self._enqueue(conn, study_uid, row.decision_seq, outgoing, now)
                return True

        return self.ledger._write("triage notice", _notice)

    def mark_labelled(self, study_uid: str, label: Optional[str], *, now: dt.datetime, how: str) -> None:
        """Record that the PACS now carries ``label`` on the study (``how``: ``label`` or ``metadata``)."""

        def _mark() -> None:
            with self.engine.begin() as conn:
                conn.execute(
                    triage_studies.update()
                    .where(triage_studies.c.study_uid == study_uid)
                    .values(label_applied=label, labelled_at=now, updated_at=now)
                )
                self._event(conn, study_uid, "labelled", now, label=label, how=how)

        self.ledger._write("triage label", _mark)

    def acknowledge(self, study_uid: str, who: str, decision: dict, *, now: dt.datetime) -> bool:
        """Record who acknowledged the study (and the decision with the hold released); False if unknown."""

        def _ack() -> bool:
            with self.engine.begin() as conn:
                done = conn.execute(
                    triage_studies.update()
                    .where(triage_studies.c.study_uid == study_uid)
                    .values(
                        acknowledged_by=who,
                        acknowledged_at=now,
                        decision=json.dumps(decision, sort_keys=True),
                        updated_at=now,
                    )
                )
                if done.rowcount != 1:
                    return False
                self._event(conn, study_uid, "acknowledged", now, by=who)
                return True

        return self.ledger._write("triage acknowledge", _ack)

    # --- sweeps ------------------------------------------------------------------------------
    def handed_off_without_row(self, pipeline_version: str, limit: int = 200) -> list[tuple[str, dt.datetime]]:
        """PACS studies with a job of this pipeline and no triage row yet: (study UID, job created)."""
        query = (
            sa.select(jobs.c.study_uid, sa.func.min(jobs.c.created_at))
            .select_from(jobs.outerjoin(triage_studies, triage_studies.c.study_uid == jobs.c.study_uid))
            .where(
                jobs.c.pipeline_version == pipeline_version,
                jobs.c.source == "pacs",
                triage_studies.c.study_uid.is_(None),
            )
            .group_by(jobs.c.study_uid)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(r[0], _aware(r[1])) for r in conn.execute(query)]

    def ended_undecided(self, pipeline_version: str, limit: int = 100) -> list[Job]:
        """Ended PACS jobs whose outcome no decision has seen yet (oldest end first)."""
        terminal = [JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.SKIPPED.value]
        query = (
            sa.select(jobs)
            .select_from(jobs.outerjoin(triage_studies, triage_studies.c.study_uid == jobs.c.study_uid))
            .where(
                jobs.c.pipeline_version == pipeline_version,
                jobs.c.source == "pacs",
                jobs.c.state.in_(terminal),
                sa.or_(
                    triage_studies.c.decided_job_finished_at.is_(None),
                    triage_studies.c.decided_job_id != jobs.c.id,
                    triage_studies.c.decided_job_finished_at < jobs.c.finished_at,
                ),
            )
            .order_by(jobs.c.finished_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def labels_to_apply(self, limit: int = 100) -> list[StudyTriage]:
        """Studies whose wanted label differs from the one last applied in the PACS."""
        query = (
            sa.select(triage_studies)
            .where(
                triage_studies.c.label_wanted.is_not(None),
                sa.or_(
                    triage_studies.c.label_applied.is_(None),
                    triage_studies.c.label_applied != triage_studies.c.label_wanted,
                ),
            )
            .order_by(triage_studies.c.updated_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [StudyTriage.from_row(r) for r in conn.execute(query)]

    def escalation_due(self, before: dt.datetime, limit: int = 100) -> list[StudyTriage]:
        """Urgent studies decided before ``before``, not acknowledged and not escalated yet."""
        query = sa.select(triage_studies).where(
            triage_studies.c.level == "urgent",
            triage_studies.c.acknowledged_at.is_(None),
            triage_studies.c.escalated_at.is_(None),
            triage_studies.c.decided_at < before,
        )
        with self.engine.connect() as conn:
            return [StudyTriage.from_row(r) for r in conn.execute(query.limit(limit))]

    def max_wait_due(self, before: dt.datetime, limit: int = 100) -> list[StudyTriage]:
        """Studies still pending or not analyzed that arrived before ``before`` and were not noticed yet."""
        query = sa.select(triage_studies).where(
            triage_studies.c.level.in_([PENDING, "not-analyzed"]),
            triage_studies.c.acknowledged_at.is_(None),
            triage_studies.c.max_wait_notified_at.is_(None),
            triage_studies.c.received_at < before,
        )
        with self.engine.connect() as conn:
            return [StudyTriage.from_row(r) for r in conn.execute(query.limit(limit))]

    def studies(self, *, level: Optional[str] = None, limit: int = 500) -> list[StudyTriage]:
        """Triage rows, optionally of one level (the caller orders them)."""
        query = sa.select(triage_studies)
        if level is not None:
            query = query.where(triage_studies.c.level == level)
        with self.engine.connect() as conn:
            return [StudyTriage.from_row(r) for r in conn.execute(query.limit(limit))]

    def events(self, study_uid: str) -> list[dict]:
        """The study's audit trail, oldest first."""
        query = sa.select(triage_events).where(triage_events.c.study_uid == study_uid).order_by(triage_events.c.id)
        with self.engine.connect() as conn:
            return [
                {"at": _aware(r.at).isoformat(), "event": r.event, **json.loads(r.detail or "{}")}
                for r in conn.execute(query)
            ]

    # --- outbox ------------------------------------------------------------------------------
    def claim_due(self, owner: str, lease_seconds: float, limit: int = 20) -> list[Delivery]:
        """Claim due notifications (pending, next attempt reached, no live lease) for ``owner``."""
        now = utcnow()
        due = sa.and_(
            triage_deliveries.c.state == DeliveryState.PENDING.value,
            triage_deliveries.c.next_attempt_at <= now,
            sa.or_(triage_deliveries.c.lease_expires_at.is_(None), triage_deliveries.c.lease_expires_at < now),
        )

        def _claim() -> list[Delivery]:
            claimed = []
            with self.engine.begin() as conn:
                ids = [
                    r.id
                    for r in conn.execute(
                        sa.select(triage_deliveries.c.id)
                        .where(due)
                        .order_by(triage_deliveries.c.next_attempt_at, triage_deliveries.c.id)
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                    )
                ]
                for row_id in ids:
                    got = conn.execute(
                        triage_deliveries.update()
                        .where(triage_deliveries.c.id == row_id, due)
                        .values(
                            lease_owner=owner,
                            lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
                            attempts=triage_deliveries.c.attempts + 1,
                            updated_at=now,
                        )
                    )
                    if got.rowcount == 1:
                        row = conn.execute(sa.select(triage_deliveries).where(triage_deliveries.c.id == row_id)).one()
                        claimed.append(Delivery.from_row(row))
            return claimed

        return self.ledger._write("outbox claim", _claim)

    def finish_delivery(
        self,
        delivery: Delivery,
        owner: str,
        state: DeliveryState,
        detail: str,
        *,
        next_attempt_at: Optional[dt.datetime] = None,
    ) -> bool:
        """Record one attempt's answer: delivered, dead, or pending again at ``next_attempt_at``."""
        now = utcnow()
        values: dict[str, Any] = {
            "state": state.value,
            "last_detail": detail[:500],
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        if state is DeliveryState.DELIVERED:
            values["delivered_at"] = now
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at

        def _finish() -> bool:
            with self.engine.begin() as conn:
                done = conn.execute(
                    triage_deliveries.update()
                    .where(triage_deliveries.c.id == delivery.id, triage_deliveries.c.lease_owner == owner)
                    .values(**values)
                )
                if done.rowcount != 1:
                    return False
                self._event(
                    conn,
                    delivery.study_uid,
                    "delivery",
                    now,
                    delivery_id=delivery.delivery_id,
                    destination=delivery.destination,
                    kind=delivery.kind,
                    attempt=delivery.attempts,
                    state=state.value,
                    answer=detail[:200],
                )
                return True

        return self.ledger._write("outbox finish", _finish)

    def deliveries(
        self,
        *,
        study_uid: Optional[str] = None,
        state: Optional[DeliveryState] = None,
        limit: int = 200,
    ) -> list[Delivery]:
        """Outbox rows, newest first, optionally of one study or state."""
        query = sa.select(triage_deliveries)
        if study_uid is not None:
            query = query.where(triage_deliveries.c.study_uid == study_uid)
        if state is not None:
            query = query.where(triage_deliveries.c.state == state.value)
        with self.engine.connect() as conn:
            return [
                Delivery.from_row(r) for r in conn.execute(query.order_by(triage_deliveries.c.id.desc()).limit(limit))
            ]

    def retry_dead(self, delivery_ids: Optional[Sequence[str]] = None) -> int:
        """Put dead-lettered notifications back in the queue (all, or those named); returns how many."""
        now = utcnow()
        statement = triage_deliveries.update().where(triage_deliveries.c.state == DeliveryState.DEAD.value)
        if delivery_ids:
            statement = statement.where(triage_deliveries.c.delivery_id.in_(list(delivery_ids)))

        def _retry() -> int:
            with self.engine.begin() as conn:
                return conn.execute(
                    statement.values(state=DeliveryState.PENDING.value, next_attempt_at=now, attempts=0, updated_at=now)
                ).rowcount

        return self.ledger._write("outbox retry", _retry)

    def delivery_counts_by_study(self) -> dict[str, dict[str, int]]:
        """Notifications by study and state, in one grouped query (what the worklist shows)."""
        column = triage_deliveries.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(column.study_uid, column.state, sa.func.count(column.id)).group_by(
                    column.study_uid, column.state
                )
            )
            counts: dict[str, dict[str, int]] = {}
            for row in rows:
                counts.setdefault(str(row[0]), {})[str(row[1])] = int(row[2])
            return counts

    def delivery_counts(self) -> dict[str, int]:
        """Number of notifications by state."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(triage_deliveries.c.state, sa.func.count(triage_deliveries.c.id)).group_by(
                    triage_deliveries.c.state
                )
            )
            return {r[0]: r[1] for r in rows}

    def level_counts(self) -> dict[str, int]:
        """Number of studies by triage level."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(triage_studies.c.level, sa.func.count(triage_studies.c.study_uid)).group_by(
                    triage_studies.c.level
                )
            )
            return {r[0]: r[1] for r in rows}
