"""The worker loop: claim a job, keep its lease alive, run the pipeline, record the outcome.

This is the only place that catches broadly. Each error class maps to what happens to the job
(the budgets are :class:`~neuroradix.jobs.retry.RetryPolicy`'s, see ``docs/reliability.md``):

=========================  ==================================================
``NotEligibleError``       skipped, with the reason (no usable CT series ...)
``BadInputError``          failed at once, with the reason
``NotConfiguredError``     failed at once (no analyzer could run), with the reason
``TransientError``         queued again after capped exponential backoff with jitter, for
                           ``retry_window_seconds`` (24 h); then failed, "gave up after 24 h: ..."
anything else              queued again after backoff (a bug, logged with traceback);
                           failed when ``max_attempts`` counted attempts are used up
past ``job_timeout``       "timed out after N s", counted like a bug; the worker process exits
                           and the supervisor (:mod:`neuroradix.runtime.supervisor`) starts a new one
=========================  ==================================================

A lost lease or a ledger that refuses a write, in any branch, is logged and the loop goes on.
Outcomes are recorded at one place per kind (``ledger.succeed`` / ``fail`` / ``retry_*`` in
:meth:`Worker._handle`, :meth:`Worker._retry_transient`, :meth:`Worker._time_out`), where a metrics
hook can count them.

A job's study comes from the PACS (``source="pacs"``: QIDO/WADO-RS in, STOW-RS out) or from an
uploaded zip (``source="upload"``, ``POST /v1/analyze``). Either way the worker runs the one
:func:`~neuroradix.pipeline.run.process_study` and writes the job's results folder
(:func:`~neuroradix.pipeline.layout.job_results_dir`): ``<analyzer>/labels.nii.gz`` and
``results.json``, plus the DICOM objects for an upload (which no PACS keeps). The API's results
zip reads that folder through the same layout module.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional, Sequence, Union

from neuroradix.analyzers.base import Analyzer
from neuroradix.analyzers.registry import Unavailable, build_analyzers
from neuroradix.config import WorkerSettings
from neuroradix.errors import (
    BadInputError,
    LedgerUnavailableError,
    NotConfiguredError,
    NotEligibleError,
    TransientError,
)
from neuroradix.jobs.ledger import UPLOAD, Job, LeaseLost, Ledger, utcnow
from neuroradix.jobs.retry import RetryPolicy
from neuroradix.jobs.triage_store import TriageStore
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pipeline.layout import job_results_dir
from neuroradix.pipeline.run import StageTimer, process_study
from neuroradix.pipeline.sinks import FolderSink, PacsSink, Sink
from neuroradix.pipeline.sources import LocalSource, PacsSource, Source, read_zip
from neuroradix.triage.decide import Decision, Outcome, decide
from neuroradix.triage.policy import Mode, PolicyStore, node_policy_path
from neuroradix.uids import short_hash

logger = logging.getLogger(__name__)

EXIT_TIMED_OUT = 75  # the worker's exit status after a job ran past its time limit (EX_TEMPFAIL)


def _fingerprint(source: Optional[Source]) -> Optional[str]:
    """The study's source fingerprint, where the job's source got as far as listing the study."""
    listed = source.listed if source is not None else None
    return listed.fingerprint if listed is not None else None


class _Heartbeat:
    """Renews the job's lease every third of its length while the pipeline runs, and enforces the time limit.

    Past ``timeout_seconds`` it stops renewing and calls ``on_timeout`` (which records the outcome and
    ends the worker process: a Python thread cannot be stopped from outside).
    """

    def __init__(
        self,
        ledger: Ledger,
        job: Job,
        worker_id: str,
        lease_seconds: float,
        timeout_seconds: float,
        on_timeout: Callable[[], None],
    ) -> None:
        self._ledger, self._job, self._worker_id, self._lease = ledger, job, worker_id, lease_seconds
        self._timeout, self._on_timeout = timeout_seconds, on_timeout
        self._stop = threading.Event()
        self.lost = False
        self.timed_out = False
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self._timeout
        while not self._stop.wait(max(0.0, min(self._lease / 3, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                self.timed_out = True
                self._on_timeout()
                return
            try:
                self._ledger.renew(self._job.id, self._worker_id, self._lease)
            except LeaseLost:
                logger.error("job %d: lease lost while running", self._job.id)
                self.lost = True
                return
            except Exception:  # noqa: BLE001 - a ledger hiccup must not kill the heartbeat
                logger.exception("job %d: lease renewal failed; will try again", self._job.id)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def make_worker_id(index: int = 0) -> str:
    """The one worker id: ``<hostname>-<pid>-<index>``, unique per process, naming the host that holds a lease.

    The lease owner in the ledger and the ``worker`` label of the metrics. ``index`` is the
    worker's number under its supervisor (``neuroradix worker --index``).
    """
    return f"{socket.gethostname()}-{os.getpid()}-{index}"


class Worker:
    """Processes jobs from the ledger until stopped.

    Parameters
    ----------
    settings:
        The node's settings.
    ledger, pacs, analyzers:
        Built from the settings when not given (tests pass their own).
    worker_id:
        Lease owner name; ``host:pid`` by default.
    policy:
        Backoff and retry budgets; from the settings when not given.
    exit_process:
        Ends the process after a job timed out (:func:`os._exit`; the supervisor starts a new
        worker). A job runs in this process's main thread, which nothing can stop from outside,
        so ending the process is the one way to free the worker; running each job in a child
        process instead would pay the analyzers' start (torch, weights) on every job.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        ledger: Optional[Ledger] = None,
        pacs: Optional[PacsClient] = None,
        analyzers: Optional[Sequence[Union[Analyzer, Unavailable]]] = None,
        worker_id: Optional[str] = None,
        *,
        policy: Optional[RetryPolicy] = None,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        if settings.job_timeout_seconds <= 0:
            raise ValueError(f"job_timeout_seconds must be positive, got {settings.job_timeout_seconds}")
        self.settings = settings
        self.policy = policy or RetryPolicy.from_settings(settings)
        self.ledger = ledger or Ledger(settings.resolved_ledger_url)
        self.pacs = pacs or PacsClient(
            settings.dicomweb_url,
            settings.orthanc_user,
            settings.orthanc_password.get_secret_value(),
            timeout=settings.http_timeout_seconds,
        )
        self.analyzers = list(analyzers) if analyzers is not None else build_analyzers(settings)
        self.worker_id = worker_id or make_worker_id()
        # The triage policy, for the SR's study-level triage item (the sweep in the sidecar decides
        # with the same file; a worker on another host without it uses the shipped default).
        self.policies = PolicyStore(node_policy_path(settings.var_dir, settings.triage_policy))
        self._exit_process = exit_process
        self._stop = threading.Event()

    def stop(self, *_: object) -> None:
        """Ask :meth:`run_forever` to return after the current job."""
        self._stop.set()

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row: exponential, capped, with jitter."""
        return self.policy.delay(failures)

    def run_forever(self) -> None:
        """Claim and process jobs until SIGTERM/SIGINT."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        logger.info("worker %s started (pipeline %s)", self.worker_id, self.settings.pipeline_version)
        failures = 0
        while not self._stop.is_set():
            try:
                worked = self.run_once()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the ledger unavailable, or a bug outside any job
                failures += 1
                delay = min(self.settings.poll_seconds * 2**failures, 60.0)
                if isinstance(exc, LedgerUnavailableError):  # cannot even claim: the ledger may come back
                    logger.error(
                        "worker %s: ledger unavailable (%s); trying again in %.0f s", self.worker_id, exc, delay
                    )
                else:
                    logger.exception(
                        "worker %s: unexpected error outside a job; trying again in %.0f s", self.worker_id, delay
                    )
                self._stop.wait(delay)
                continue
            if not worked:
                self._stop.wait(self.settings.poll_seconds)
        logger.info("worker %s stopped", self.worker_id)

    def run_once(self) -> bool:
        """Claim and process one job; False when there was none."""
        job = self.ledger.claim(self.worker_id, self.settings.lease_seconds)
        if job is None:
            return False
        self.handle(job)
        return True

    def _source_and_sinks(self, job: Job) -> tuple[Source, list[Sink]]:
        results = FolderSink(
            job_results_dir(self.settings.var_dir, job.id), include_dicom=job.source == UPLOAD, replace=True
        )
        if job.source == UPLOAD:
            path = Path(job.input_path or "")
            if not job.input_path or not path.is_file():
                raise BadInputError("the uploaded study is no longer on the node; upload it again")
            datasets = read_zip(
                path, self.settings.max_upload_expanded_bytes, max_ratio=self.settings.max_zip_member_ratio
            )
            return LocalSource(datasets, release_pixels=True), [results]
        return PacsSource(self.pacs, job.study_uid), [PacsSink(self.pacs), results]

    def _discard_upload(self, job: Job) -> None:
        """An upload's zip is deleted once its job has ended (it is kept while a retry may need it)."""
        if job.source != UPLOAD or not job.input_path:
            return
        after = self.ledger.get(job.id)
        if after is not None and after.state.terminal:
            Path(job.input_path).unlink(missing_ok=True)

    def handle(self, job: Job) -> None:
        """Run one claimed job and record its outcome (never raises for the job's own errors).

        A lease lost or a ledger that refuses the write, in any branch, is logged here and the
        worker carries on: the job's lease expires and the job is claimed again (at-least-once).
        """
        try:
            self._handle(job)
        except (LeaseLost, LedgerUnavailableError) as exc:  # the outcome could not be recorded
            logger.error("job %d: outcome not recorded (%s); the lease expires and the job runs again", job.id, exc)
        finally:
            try:
                self._discard_upload(job)
            except Exception:  # noqa: BLE001 - cleaning up an upload must not stop the worker
                logger.exception("job %d: could not clean up its upload", job.id)

    def _handle(self, job: Job) -> None:
        tag = short_hash(job.study_uid)
        logger.info(
            "job %d (study %s): attempt %d (%d of %d counted)",
            job.id,
            tag,
            job.attempts,
            job.counted_attempts,
            job.max_attempts,
        )
        started = time.perf_counter()
        timer = StageTimer()
        source: Optional[Source] = None
        heartbeat = _Heartbeat(
            self.ledger,
            job,
            self.worker_id,
            self.settings.lease_seconds,
            self.settings.job_timeout_seconds,
            on_timeout=lambda: self._time_out(job),
        )
        try:
            with heartbeat:
                source, sinks = self._source_and_sinks(job)
                outcome = process_study(
                    source, sinks, self.settings, self.analyzers, timer, triage=self._sr_triage(job)
                )
            if heartbeat.timed_out:
                raise LeaseLost(f"job {job.id} finished after its time limit; its timeout was recorded")
            if heartbeat.lost:
                raise LeaseLost(f"job {job.id} ran past its lease and was taken over")
            timings = {**outcome.timings, "total": round(time.perf_counter() - started, 3)}
            self.ledger.succeed(
                job.id,
                self.worker_id,
                input_series_uid=outcome.input_series_uid,
                output_uids=outcome.output_records(),
                timings=timings,
                details=outcome.details(),
                fingerprint=_fingerprint(source),
            )
            logger.info("job %d (study %s): succeeded in %.1f s", job.id, tag, timings["total"])
        except LeaseLost as exc:
            logger.error("job %d: %s; its new owner records the outcome", job.id, exc)
        except NotEligibleError as exc:
            logger.info("job %d (study %s): skipped: %s", job.id, tag, exc)
            self.ledger.fail(
                job.id,
                self.worker_id,
                type(exc).__name__,
                str(exc),
                skipped=True,
                timings=timer.seconds,
                fingerprint=_fingerprint(source),
            )
        except (BadInputError, NotConfiguredError) as exc:
            logger.warning("job %d (study %s): failed: %s", job.id, tag, exc)
            self.ledger.fail(
                job.id,
                self.worker_id,
                type(exc).__name__,
                str(exc),
                timings=timer.seconds,
                fingerprint=_fingerprint(source),
            )
        except LedgerUnavailableError:
            raise  # recording the outcome failed: handle() logs it, nothing more can be written now
        except TransientError as exc:
            if heartbeat.timed_out:
                logger.error("job %d: %s after its time limit; its timeout was recorded", job.id, exc)
                return
            self._retry_transient(job, exc, timer)
        except Exception as exc:  # noqa: BLE001 - the loop must survive any one job
            if heartbeat.timed_out:
                logger.error("job %d: %r after its time limit; its timeout was recorded", job.id, exc)
                return
            logger.exception("job %d (study %s): unexpected error", job.id, tag)
            delay = self.backoff(job.counted_attempts)
            self.ledger.retry_later(job.id, self.worker_id, type(exc).__name__, f"internal error: {exc}", delay)

    def _sr_triage(self, job: Job) -> Optional[Callable[[dict[str, dict]], Optional[dict]]]:
        """The decision the SR states for a PACS study (active policy only), from this run's results.

        Made with the policy in force and the study's previous decision (a level is never lowered
        by a rerun), like the sidecar's triage sweep, which decides again from the recorded outcome
        and is the one that labels and notifies.
        """
        if job.source == UPLOAD:
            return None
        policy = self.policies.current()
        if policy.mode is not Mode.ACTIVE:
            return None

        def decide_for_sr(summaries: dict[str, dict]) -> Optional[dict]:
            row = TriageStore(self.ledger).get(job.study_uid)
            previous = Decision.from_json(row.decision) if row is not None and row.decision else None
            return decide(policy, {"results": summaries}, Outcome.SUCCEEDED, previous, now=utcnow()).to_json()

        return decide_for_sr

    def _retry_transient(self, job: Job, exc: TransientError, timer: StageTimer) -> None:
        """Queue the job again after a transient error, or fail it once the retry window is spent."""
        tag = short_hash(job.study_uid)
        now = utcnow()
        since = job.retrying_since or now
        delay = self.policy.transient_delay(since, now, job.transient_attempts + 1)
        if delay is None:
            reason = f"gave up after {self.policy.window}: {exc}"
            logger.warning("job %d (study %s): failed: %s", job.id, tag, reason)
            self.ledger.fail(
                job.id, self.worker_id, type(exc).__name__, reason, timings=timer.seconds, retrying_since=since
            )
            return
        state = self.ledger.retry_transient(job.id, self.worker_id, type(exc).__name__, str(exc), delay, since)
        logger.warning("job %d (study %s): %s; %s (retry in %.0f s)", job.id, tag, exc, state.value, delay)

    def _time_out(self, job: Job) -> None:
        """The job ran past its time limit: record it (retried or failed by count), then end the process.

        Runs in the heartbeat thread while the job's thread may still be stuck.
        """
        limit = self.settings.job_timeout_seconds
        message = f"timed out after {limit:g} s"
        logger.error("job %d (study %s): %s; ending the worker process", job.id, short_hash(job.study_uid), message)
        try:
            state = self.ledger.retry_later(
                job.id, self.worker_id, "JobTimeout", message, self.backoff(job.counted_attempts)
            )
            logger.error("job %d: %s after the timeout", job.id, state.value)
        except (LeaseLost, LedgerUnavailableError) as exc:
            logger.error("job %d: timeout not recorded (%s); the lease expires and the job runs again", job.id, exc)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit_process(EXIT_TIMED_OUT)
