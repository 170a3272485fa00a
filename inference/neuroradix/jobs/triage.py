"""Triage on arrival: the sweep that turns job outcomes into priorities, labels and notifications.

Level-triggered like the reconciler: each pass reads the ledger and makes the world match it, so a
killed process loses nothing (the next pass, in this or another process, does what is missing).

One pass (:meth:`TriageDispatcher.run_once`):

1. **received** -- a PACS study with a job and no triage row gets one, level ``pending`` and the
   label ``ai-pending`` (from hand-off to decision).
2. **decide** -- every ended job whose outcome no decision has seen is decided with the policy in
   force (:func:`neuroradix.triage.decide`: pure, never lowers an unacknowledged level). The
   decision and its notifications (one outbox row per destination that wants the level) are
   written in one transaction. A notice goes out when the shown level changes; a held level
   does not notify again.
3. **label** -- the study's one ``ai-*`` label and the decision metadata are put in Orthanc.
4. **escalate** -- an ``urgent`` study unacknowledged after ``escalate_after_minutes`` is notified
   again (kind ``escalation``); a study still ``pending`` or ``not-analyzed`` after
   ``max_wait_minutes`` is notified as such (kind ``max-wait``), so no study waits unseen because
   the AI failed on it.
5. **deliver** -- due outbox rows are claimed with a lease and sent; delivered, retried by time
   (backoff as for jobs, :class:`~neuroradix.jobs.retry.RetryPolicy`), or dead-lettered (the
   receiver refused the message as malformed, or the retry window is spent).

In ``shadow`` mode a decision is made, recorded and counted, and nothing is labelled or sent.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from neuroradix.config import Settings
from neuroradix.errors import LedgerUnavailableError, NeuroRadixError, NotEligibleError
from neuroradix.jobs.ledger import Job, JobState, Ledger, utcnow
from neuroradix.jobs.retry import RetryPolicy
from neuroradix.jobs.triage_store import (
    DecisionRecord,
    Delivery,
    DeliveryState,
    Outgoing,
    StudyTriage,
    TriageStore,
)
from neuroradix.notify.destinations import DestinationStore, deliver, destinations_path
from neuroradix.notify.message import Evidence as NoticeEvidence
from neuroradix.notify.message import Links, Notification, PatientInfo
from neuroradix.pacs.study_flags import StudyFlags
from neuroradix.triage.decide import Decision, Evidence, Outcome, decide
from neuroradix.triage.policy import Level, Mode, PolicyStore, TriagePolicy, node_policy_path
from neuroradix.uids import short_hash

logger = logging.getLogger(__name__)

NODE_LABELS = tuple(level.label for level in Level)  # the labels the node owns on a study


@dataclass(frozen=True)
class TriageOptions:
    """How the sweep runs (``NEURORADIX_TRIAGE_*`` / ``NEURORADIX_NOTIFY_*`` settings).

    Parameters
    ----------
    poll_seconds
        Pause between passes.
    notify_timeout_seconds
        Time limit of one delivery attempt.
    lease_seconds
        How long a claimed delivery is held before another process may try it.
    retry
        Backoff and window of failed deliveries.
    viewer_url, api_url
        Public addresses put into notifications (the worklist page, OHIF, the results zip); None
        leaves the links out.
    """

    poll_seconds: float = 1.0
    notify_timeout_seconds: float = 10.0
    lease_seconds: float = 60.0
    retry: RetryPolicy = RetryPolicy(base_seconds=2.0, max_seconds=60.0, window_seconds=86400.0)
    viewer_url: Optional[str] = None
    api_url: Optional[str] = None


def job_outcome(job: Job) -> tuple[Outcome, Optional[str]]:
    """The triage outcome of an ended job and its reason (the job's error message)."""
    if job.state is JobState.SUCCEEDED:
        return Outcome.SUCCEEDED, None
    if job.state is JobState.SKIPPED:
        return Outcome.SKIPPED, job.error_message or "skipped"
    if job.error_class == "JobTimeout" or "timed out" in (job.error_message or ""):
        return Outcome.TIMED_OUT, job.error_message or "timed out"
    return Outcome.FAILED, job.error_message or "failed"


def _notice_evidence(items: Sequence[Evidence]) -> tuple[NoticeEvidence, ...]:
    out = []
    for e in items:
        comparator = ">=" if e.at_least is not None else "<="
        out.append(
            NoticeEvidence(
                rule=e.rule,
                name=e.name,
                value=e.value,
                unit="" if e.kind == "finding" else e.unit,
                threshold=e.at_least if e.at_least is not None else e.at_most,
                comparator=comparator,
                analyzer=e.analyzer,
                kind=e.kind,
            )
        )
    return tuple(out)


class TriageDispatcher:
    """Runs the triage passes in a background thread (the sidecar starts one).

    Parameters
    ----------
    pipeline_version
        Only jobs of this pipeline are triaged.
    ledger
        The node's ledger.
    flags
        Orthanc access for labels, metadata and the patient module.
    policies
        The policy in force (reloaded when its file changes).
    destinations
        Where notifications go (reloaded when the file changes).
    options
        Timing, retry and public links.
    """

    def __init__(
        self,
        pipeline_version: str,
        ledger: Ledger,
        flags: StudyFlags,
        policies: PolicyStore,
        destinations: DestinationStore,
        options: Optional[TriageOptions] = None,
    ) -> None:
        self.pipeline_version = pipeline_version
        self.ledger = ledger
        self.store = TriageStore(ledger)
        self.flags = flags
        self.policies = policies
        self.destinations = destinations
        self.options = options or TriageOptions()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:triage"
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- thread ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the passes in a daemon thread."""
        policy = self.policies.current()
        logger.info(
            "triage: policy %s (sha256 %s, mode %s, %d rules)",
            policy.version,
            policy.sha256[:12],
            policy.mode.value,
            len(policy.rules),
        )
        try:  # says at start when the Orthanc has no labels (the level then lives in study metadata only)
            self.flags.has_labels()
        except NeuroRadixError as exc:
            logger.warning("triage: Orthanc not reachable at start (%s); labels are applied once it answers", exc)
        self._thread = threading.Thread(target=self._run, name="triage", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the sweep must survive anything; the next pass retries
                logger.exception("triage pass failed; trying again")
                self._stop.wait(min(30.0, 5 * self.options.poll_seconds))
            self._stop.wait(self.options.poll_seconds)

    # --- one pass ----------------------------------------------------------------------------
    def run_once(self, now: Optional[dt.datetime] = None) -> dict[str, int]:
        """One pass of every step; returns how much each step did."""
        policy = self.policies.current()
        active = policy.mode is Mode.ACTIVE
        done = {"received": self._receive(active), "decided": self._decide(policy)}
        done["labelled"] = self._label() if active else 0
        done["noticed"] = self._notices(policy, now or utcnow()) if active else 0
        done["delivered"] = self._deliver()
        return done

    def _receive(self, active: bool) -> int:
        count = 0
        for study_uid, created in self.store.handed_off_without_row(self.pipeline_version):
            if self.store.mark_received(study_uid, created, Level.PENDING.label if active else None):
                count += 1
        return count

    def _decide(self, policy: TriagePolicy) -> int:
        count = 0
        for job in self.store.ended_undecided(self.pipeline_version):
            try:
                self.decide_job(job, policy)
                count += 1
            except (LedgerUnavailableError, NeuroRadixError) as exc:  # PACS down: the next pass tries again
                logger.warning("triage: study %s not decided yet (%s)", short_hash(job.study_uid), exc)
        return count

    def decide_job(self, job: Job, policy: TriagePolicy, now: Optional[dt.datetime] = None) -> Decision:
        """Decide one ended job's study and store the decision with its notifications."""
        now = now or utcnow()
        row = self.store.get(job.study_uid)
        previous = Decision.from_json(row.decision) if row is not None and row.decision else None
        outcome, reason = job_outcome(job)
        results = {"results": job.details.get("results", {}), "analyzers": job.details.get("analyzers", {})}
        decision = decide(
            policy, results if outcome is Outcome.SUCCEEDED else None, outcome, previous, now=now, reason=reason
        )
        active = policy.mode is Mode.ACTIVE
        changed = previous is None or previous.level is not decision.level
        outgoing: list[Outgoing] = []
        if active and changed:
            outgoing = self._outgoing(job.study_uid, job, decision, "decision")
        self.store.record_decision(
            job.study_uid,
            DecisionRecord(
                level=decision.level.value,
                decision=decision.to_json(),
                label_wanted=decision.level.label if active else None,
                job_id=job.id,
                job_finished_at=job.finished_at,
            ),
            outgoing,
            now=now,
        )
        logger.info(
            "triage: study %s %s (%s; policy %s%s)",
            short_hash(job.study_uid),
            decision.level.value,
            ", ".join(decision.reasons) or "no rule",
            decision.policy_version,
            ", shadow" if not active else "",
        )
        return decision

    def _patient(self, study_uid: str) -> tuple[PatientInfo, str]:
        try:
            info = self.flags.patient_info(study_uid)
        except NotEligibleError:  # not (or no longer) in the PACS: the notice still goes out
            return PatientInfo(), ""
        return (
            PatientInfo(id=info.patient_id, name=info.patient_name, birth_date=info.birth_date, sex=info.sex),
            info.accession_number,
        )

    def _links(self, study_uid: str, job_id: Optional[int]) -> Links:
        viewer = self.options.viewer_url.rstrip("/") if self.options.viewer_url else None
        api = self.options.api_url.rstrip("/") if self.options.api_url else None
        return Links(
            worklist_url=f"{viewer}/worklist" if viewer else None,
            ohif_url=f"{viewer}/viewer?StudyInstanceUIDs={study_uid}" if viewer else None,
            results_url=f"{api}/v1/jobs/{job_id}/results" if api and job_id is not None else None,
        )

    def _outgoing(self, study_uid: str, job: Optional[Job], decision: Decision, kind: str) -> list[Outgoing]:
        """One outbox entry per destination that wants this notice; the PACS is asked only when one does."""
        wanted = [d for d in self.destinations.list() if d.wants(decision.level.value, kind)]
        if not wanted:
            return []
        patient, accession = self._patient(study_uid)
        links = self._links(study_uid, job.id if job is not None else None)
        results = job.details.get("results", {}) if job is not None else {}
        untrained = any(bool(summary.get("analyzer", {}).get("untrained")) for summary in results.values())
        note = "UNTRAINED model output: not for clinical use" if untrained else None

        def payload(delivery_id: str) -> dict:  # the same notice for every destination, with its own id
            return Notification(
                delivery_id=delivery_id,
                kind=kind,
                study_uid=study_uid,
                accession_number=accession,
                patient=patient,
                level=decision.level.value,
                reasons=decision.reasons,
                evidence=_notice_evidence(decision.evidence),
                policy_version=decision.policy_version,
                policy_sha256=decision.policy_sha256,
                decided_at=decision.decided_at,
                created_at=utcnow().isoformat(),
                links=links,
                untrained_or_licence_note=note,
            ).to_dict()

        return [Outgoing(destination=d.name, kind=kind, build=payload) for d in wanted]

    def _label(self) -> int:
        count = 0
        for row in self.store.labels_to_apply():
            if row.label_wanted is None:
                continue
            try:
                how = self.flags.apply(row.study_uid, row.label_wanted, NODE_LABELS, self._metadata(row))
            except NotEligibleError as exc:  # the study left the PACS: nothing to label
                logger.warning("triage: study %s not labelled (%s)", short_hash(row.study_uid), exc)
                self.store.mark_labelled(row.study_uid, row.label_wanted, now=utcnow(), how="absent")
                continue
            except NeuroRadixError as exc:  # PACS down or refusing: the next pass tries again
                logger.warning("triage: study %s label not applied yet (%s)", short_hash(row.study_uid), exc)
                continue
            self.store.mark_labelled(row.study_uid, row.label_wanted, now=utcnow(), how=how)
            count += 1
        return count

    @staticmethod
    def _metadata(row: StudyTriage) -> dict:
        decision = row.decision
        return {
            "level": row.level,
            "reasons": decision.get("reasons", []),
            "policy_version": decision.get("policy_version"),
            "policy_sha256": decision.get("policy_sha256"),
            "decided_at": decision.get("decided_at"),
            "held": decision.get("held", False),
        }

    def _notices(self, policy: TriagePolicy, now: dt.datetime) -> int:
        count = 0
        escalate_before = now - dt.timedelta(minutes=policy.escalate_after_minutes)
        for row in self.store.escalation_due(escalate_before):
            count += self._notice(row, "escalation", now)
        wait_before = now - dt.timedelta(minutes=policy.max_wait_minutes)
        for row in self.store.max_wait_due(wait_before):
            count += self._notice(row, "max-wait", now)
        return count

    def _notice(self, row: StudyTriage, kind: str, now: dt.datetime) -> int:
        if row.decision:
            decision = Decision.from_json(row.decision)
        else:  # still pending: a decision-shaped notice of the pending state
            policy = self.policies.current()
            decision = decide(policy, None, Outcome.PENDING, None, now=now, reason="not analyzed yet")
        job_id = row.decided_job_id
        job = self.ledger.get(job_id) if job_id is not None else None
        try:
            outgoing = self._outgoing(row.study_uid, job, decision, kind)
        except NeuroRadixError as exc:
            logger.warning("triage: %s notice of study %s waits (%s)", kind, short_hash(row.study_uid), exc)
            return 0
        # Outbox times are wall-clock (due now); ``now`` only decided which studies were overdue.
        return int(self.store.record_notice(row.study_uid, kind, outgoing, now=utcnow()))

    def _deliver(self) -> int:
        count = 0
        for delivery in self.store.claim_due(self.owner, self.options.lease_seconds):
            count += self.deliver_one(delivery)
        return count

    def deliver_one(self, delivery: Delivery) -> int:
        """Send one claimed notification and record the answer; 1 when it was delivered."""
        tag = short_hash(delivery.study_uid)
        try:
            destination = self.destinations.get(delivery.destination)
        except KeyError:
            self.store.finish_delivery(delivery, self.owner, DeliveryState.DEAD, "destination removed")
            return 0
        result = deliver(
            destination, Notification.from_dict(delivery.payload), timeout=self.options.notify_timeout_seconds
        )
        if result.ok:
            self.store.finish_delivery(delivery, self.owner, DeliveryState.DELIVERED, result.detail)
            logger.info("triage: study %s %s to %s delivered", tag, delivery.kind, delivery.destination)
            return 1
        now = utcnow()
        delay = (
            None
            if result.permanent
            else self.options.retry.transient_delay(delivery.created_at, now, delivery.attempts)
        )
        if delay is None:
            why = (
                result.detail
                if result.permanent
                else f"gave up after {self.options.retry.window_seconds:g} s: {result.detail}"
            )
            self.store.finish_delivery(delivery, self.owner, DeliveryState.DEAD, why)
            logger.error("triage: study %s %s to %s dead-lettered: %s", tag, delivery.kind, delivery.destination, why)
            return 0
        self.store.finish_delivery(
            delivery,
            self.owner,
            DeliveryState.PENDING,
            result.detail,
            next_attempt_at=now + dt.timedelta(seconds=delay),
        )
        logger.warning(
            "triage: study %s %s to %s failed (%s); retry in %.0f s",
            tag,
            delivery.kind,
            delivery.destination,
            result.detail,
            delay,
        )
        return 0


def build_dispatcher(settings: Settings, ledger: Ledger) -> TriageDispatcher:
    """The node's triage sweep from its settings.

    The policy is ``NEURORADIX_TRIAGE_POLICY`` when set, else ``var/triage-policy.yaml`` (where
    ``neuroradix triage set`` installs one), else the shipped default; destinations are
    ``var/destinations.json``. Both files are re-read when they change.

    Raises
    ------
    PolicyError
        When the policy file exists and is invalid: the node refuses to start on it.
    """
    policies = PolicyStore(node_policy_path(settings.var_dir, settings.triage_policy))
    destinations = DestinationStore(destinations_path(settings.var_dir))
    flags = StudyFlags(
        settings.orthanc_url,
        settings.orthanc_user,
        settings.orthanc_password.get_secret_value(),
        timeout=min(settings.http_timeout_seconds, 30.0),
    )
    options = TriageOptions(
        poll_seconds=settings.triage_poll_seconds,
        notify_timeout_seconds=settings.notify_timeout_seconds,
        retry=RetryPolicy(
            base_seconds=settings.notify_retry_base_seconds,
            max_seconds=max(settings.notify_retry_max_seconds, settings.notify_retry_base_seconds),
            window_seconds=settings.notify_retry_window_seconds,
            jitter=settings.retry_jitter,
        ),
        viewer_url=settings.public_viewer_url,
        api_url=settings.public_api_url,
    )
    return TriageDispatcher(settings.pipeline_version, ledger, flags, policies, destinations, options)
