"""Level-triggered safety net: a periodic sweep that makes the PACS hold what the ledger says it should.

The desired state is "every eligible study in the PACS has the node's results for the current
pipeline version". Events from the plugin only make the node fast; each sweep compares the PACS
with the ledger and queues what is off, even when an event was lost (sidecar down, Orthanc
restarted, queue full) or someone changed the PACS behind the node's back:

1. **New studies** (:func:`sweep`): a QIDO search of CT studies, page by page, enqueues those
   without a job. A study found this way waits ``reconcile_settle_seconds`` before it is
   processed, since QIDO cannot say whether it is still arriving; if it was, the plugin's hand-off
   with a new source fingerprint reruns it (see :meth:`neuroradix.jobs.ledger.Ledger.enqueue`).
2. **Given up on an outage** (:func:`requeue_gave_up`): jobs that ended ``failed`` because a
   transient error (PACS down, 401/403, partial STOW) outlasted the retry window are queued again
   once the PACS answers -- only after step 1's QIDO search succeeded in the same sweep.
3. **Results gone** (:func:`verify_results`): for succeeded jobs, a QIDO series search of the
   study checks that each output series is there, has the node's Manufacturer and the number of
   instances the job stored; if not (someone deleted it, or another sender's series holds the UID)
   and the source series is still there, the study runs again.

Cost per sweep: step 1 is ``ceil(studies / page_size)`` QIDO calls and a read of the ledger's
study UIDs; step 2 one ledger query; step 3 one QIDO series search for each of at most
``reconcile_verify_per_sweep`` succeeded jobs, walked with a cursor by job id that wraps around. So
an archive of N processed studies is fully checked every ``N / reconcile_verify_per_sweep`` sweeps
(10,000 studies at 50 per minute: every 3.3 h) while the load on the PACS stays flat; raise the
setting for a faster check of a large archive.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from neuroradix import MANUFACTURER
from neuroradix.config import Settings
from neuroradix.errors import NotEligibleError, TransientError
from neuroradix.jobs.ledger import Job, JobState, Ledger
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.uids import short_hash

logger = logging.getLogger(__name__)


def sweep(settings: Settings, ledger: Ledger, pacs: PacsClient, page_size: int = 200) -> int:
    """Enqueue every CT study in the PACS without a job for the current pipeline version.

    Parameters
    ----------
    settings:
        The node's settings (pipeline version, attempts, settle time).
    ledger:
        Where jobs are queued.
    pacs:
        Searched with :meth:`~neuroradix.pacs.dicomweb.PacsClient.search_studies`, page by page.
    page_size:
        Studies per QIDO page.

    Returns
    -------
    int
        How many jobs were created.
    """
    version = settings.pipeline_version
    known = ledger.known_studies(version)
    enqueued = 0
    offset = 0
    while True:
        page = pacs.search_studies(modality="CT", limit=page_size, offset=offset)
        for study in page:
            uid = study.study_uid
            if uid and uid not in known:
                _, created = ledger.enqueue(
                    uid,
                    version,
                    trigger="reconciler",
                    max_attempts=settings.max_attempts,
                    delay_seconds=settings.reconcile_settle_seconds,
                )
                enqueued += int(created)
                known.add(uid)
        if len(page) < page_size:
            break
        offset += page_size
    if enqueued:
        logger.info("reconciler: enqueued %d study(ies) that had no job", enqueued)
    return enqueued


def requeue_gave_up(settings: Settings, ledger: Ledger, limit: int = 100) -> int:
    """Queue again the jobs that gave up on a transient error (call only once the PACS answered).

    Returns
    -------
    int
        How many jobs were queued again (at most ``limit`` per call).
    """
    requeued = 0
    for job in ledger.gave_up_transient(settings.pipeline_version, limit=limit):
        again, _ = ledger.enqueue(job.study_uid, job.pipeline_version, trigger="reconciler", rerun=True)
        requeued += int(again.state == JobState.QUEUED)
    if requeued:
        logger.info("reconciler: the PACS answers again; queued %d job(s) that had given up on an outage", requeued)
    return requeued


def missing_results(job: Job, pacs: PacsClient) -> Optional[str]:
    """Why the PACS no longer holds what ``job`` stored (a reason without UIDs), or None when it does.

    None also when the study's source series is gone: then there is nothing to analyze again.
    """
    expected = Counter(str(record["series_instance_uid"]) for record in job.output_uids)
    if not expected:
        return None
    try:
        present = {s.series_uid: s for s in pacs.search_series(job.study_uid)}
    except NotEligibleError:  # the whole study was deleted
        return None
    if job.input_series_uid and job.input_series_uid not in present:
        return None
    for series_uid, count in sorted(expected.items()):
        found = present.get(series_uid)
        if found is None:
            return "an output series is missing from the PACS"
        if found.manufacturer != MANUFACTURER:
            return f"an output series is not the node's own (manufacturer {found.manufacturer!r})"
        if found.n_instances is not None and found.n_instances != count:
            return f"an output series holds {found.n_instances} instance(s), the job stored {count}"
    return None


def verify_results(settings: Settings, ledger: Ledger, pacs: PacsClient, after_id: int, limit: int) -> tuple[int, int]:
    """Check up to ``limit`` succeeded jobs with an id above ``after_id``; rerun those whose results are gone.

    Returns
    -------
    tuple[int, int]
        How many jobs were queued again, and the cursor for the next call (0 once the end is reached).
    """
    page = ledger.succeeded_after(settings.pipeline_version, after_id, limit)
    requeued = 0
    for job in page:
        reason = missing_results(job, pacs)
        if reason is None:
            continue
        logger.warning("reconciler: study %s: %s; running it again", short_hash(job.study_uid), reason)
        again, _ = ledger.enqueue(job.study_uid, job.pipeline_version, trigger="reconciler", rerun=True)
        requeued += int(again.state == JobState.QUEUED)
    return requeued, (page[-1].id if len(page) == limit else 0)


@dataclass(frozen=True)
class SweepReport:
    """What one reconciler pass did."""

    enqueued: int  # new studies without a job
    requeued_after_outage: int  # jobs that had given up on a transient error
    requeued_missing: int  # succeeded jobs whose results were gone from the PACS
    cursor: int  # where the next pass continues checking results


def reconcile(settings: Settings, ledger: Ledger, pacs: PacsClient, cursor: int = 0) -> SweepReport:
    """One full pass (see the module docstring); a transient error from the PACS ends it early.

    Parameters
    ----------
    cursor:
        The job id after which results are checked (the previous report's ``cursor``).
    """
    enqueued = sweep(settings, ledger, pacs)  # raises TransientError while the PACS is down
    requeued = requeue_gave_up(settings, ledger)
    missing, cursor = verify_results(settings, ledger, pacs, cursor, settings.reconcile_verify_per_sweep)
    return SweepReport(enqueued, requeued, missing, cursor)


class Reconciler:
    """Runs :func:`reconcile` every ``reconcile_interval_seconds`` in a daemon thread."""

    def __init__(self, settings: Settings, ledger: Ledger, pacs: PacsClient) -> None:
        self.settings, self.ledger, self.pacs = settings, ledger, pacs
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.last_error: Optional[str] = None
        self.cursor = 0

    def start(self) -> None:
        """Start sweeping in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current sweep (waits up to 5 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            try:
                self.cursor = reconcile(self.settings, self.ledger, self.pacs, self.cursor).cursor
                self.last_error = None
            except TransientError as exc:
                self.last_error = str(exc)
                logger.warning("reconciler: %s", exc)
            except Exception as exc:  # noqa: BLE001 - keep sweeping
                self.last_error = str(exc)
                logger.exception("reconciler sweep failed")
            if self._stop.wait(self.settings.reconcile_interval_seconds):
                return
