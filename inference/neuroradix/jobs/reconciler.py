"""Level-triggered safety net: a periodic QIDO sweep enqueues CT studies that have no job yet.

Events from the plugin only make the node fast; this sweep makes "every eligible study has
results for the current pipeline version" true even when an event was lost (sidecar down,
Orthanc restarted, queue full). Studies are paged through with limit/offset. A study found this way waits
``reconcile_settle_seconds`` before it is processed, since QIDO cannot say whether it is still
arriving; if it was, the plugin's hand-off with a new source fingerprint reruns it (see
:meth:`neuroradix.jobs.ledger.Ledger.enqueue`).
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from neuroradix.config import Settings
from neuroradix.errors import TransientError
from neuroradix.jobs.ledger import Ledger
from neuroradix.pacs.dicomweb import PacsClient

LOG = logging.getLogger(__name__)


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
        LOG.info("reconciler: enqueued %d study(ies) that had no job", enqueued)
    return enqueued


class Reconciler:
    """Runs :func:`sweep` every ``reconcile_interval_seconds`` in a daemon thread."""

    def __init__(self, settings: Settings, ledger: Ledger, pacs: PacsClient) -> None:
        self.settings, self.ledger, self.pacs = settings, ledger, pacs
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.last_error: Optional[str] = None

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
                sweep(self.settings, self.ledger, self.pacs)
                self.last_error = None
            except TransientError as exc:
                self.last_error = str(exc)
                LOG.warning("reconciler: %s", exc)
            except Exception as exc:  # noqa: BLE001 - keep sweeping
                self.last_error = str(exc)
                LOG.exception("reconciler sweep failed")
            if self._stop.wait(self.settings.reconcile_interval_seconds):
                return
