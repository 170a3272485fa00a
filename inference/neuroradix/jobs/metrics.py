"""Prometheus metrics of the job machinery (``neuroradix_*``), and the JSON log format.

Two sources:

* **the ledger, read at scrape time** (:class:`LedgerCollector`): jobs by state, queue depth, age
  of the oldest queued job. Whoever scrapes the sidecar sees the whole node, all hosts included.
* **the worker processes** (:class:`MeteredLedger`, the ledger a worker writes its outcomes
  through): finished jobs by outcome, per-stage durations (the pipeline's
  :class:`~neuroradix.pipeline.run.StageTimer` totals each job records), failures and retries by
  error class, lease take-overs, studies per analyzer, each worker's last-seen time, the GPU
  memory peak. Workers the sidecar starts write them to files (prometheus_client's multiprocess
  mode, ``PROMETHEUS_MULTIPROC_DIR`` = ``<var>/run/metrics``) that the sidecar's ``/metrics``
  merges; a worker-only host serves its own (``neuroradix worker --metrics-port``).

Logs: ``NEURORADIX_LOG_FORMAT=json`` writes one JSON object per line (:class:`JsonFormatter`),
with the job id and the study's short hash of the job the process is working on (set on claim).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import inspect
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import sqlalchemy as sa
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from neuroradix.jobs.ledger import Job, JobState, Ledger, jobs, utcnow
from neuroradix.jobs.triage_store import DeliveryState, TriageStore
from neuroradix.uids import short_hash

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

JOBS_FINISHED = Counter(
    "neuroradix_jobs_finished", "Jobs a worker ended, by outcome (succeeded, failed, skipped)", ["outcome"]
)
FAILURES = Counter("neuroradix_job_failures", "Jobs ended as failed, by error class", ["error_class"])
RETRIES = Counter("neuroradix_job_retries", "Jobs queued again after an error, by error class", ["error_class"])
LEASE_TAKEOVERS = Counter(
    "neuroradix_lease_takeovers", "Jobs claimed from a worker whose lease had expired (a dead or stuck worker)"
)
STUDIES = Counter(
    "neuroradix_studies_processed", "Studies an analyzer ran on, by analyzer and its status", ["analyzer", "status"]
)
STAGE_SECONDS = Histogram(
    "neuroradix_stage_duration_seconds", "Seconds per pipeline stage of one job", ["stage"], buckets=STAGE_BUCKETS
)
WORKER_LAST_SEEN = Gauge(
    "neuroradix_worker_last_seen_timestamp_seconds",
    "Unix time a worker last claimed or renewed (its heartbeat)",
    ["worker"],
    multiprocess_mode="max",
)
GPU_MEMORY_PEAK = Gauge(
    "neuroradix_gpu_memory_peak_bytes",
    "Peak GPU memory torch allocated in a worker process",
    ["worker", "device"],
    multiprocess_mode="max",
)

LEDGER_METRICS = (
    "neuroradix_jobs",
    "neuroradix_queue_depth",
    "neuroradix_oldest_queued_age_seconds",
    "neuroradix_ledger_up",
    "neuroradix_notifications",
    "neuroradix_triage_studies",
)
"""The families :class:`LedgerCollector` yields."""

JOB_ID: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("neuroradix_job_id", default=None)
STUDY: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("neuroradix_study", default=None)


# --- the ledger at scrape time -----------------------------------------------------------------
class LedgerCollector(Collector):
    """Jobs by state, queue depth and the oldest queued job's age, read from the ledger per scrape."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not query the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The families, read from the ledger now (``neuroradix_ledger_up`` 0 when it does not answer)."""
        by_state = GaugeMetricFamily("neuroradix_jobs", "Jobs in the ledger by state", labels=["state"])
        depth = GaugeMetricFamily("neuroradix_queue_depth", "Jobs waiting to be claimed (state queued)")
        oldest = GaugeMetricFamily(
            "neuroradix_oldest_queued_age_seconds", "Age of the oldest queued job (0 when none waits)"
        )
        up = GaugeMetricFamily("neuroradix_ledger_up", "1 when the ledger answered this scrape")
        try:
            counts = self.ledger.counts()
            with self.ledger.engine.connect() as conn:
                first = conn.execute(
                    sa.select(sa.func.min(jobs.c.created_at)).where(jobs.c.state == JobState.QUEUED.value)
                ).scalar()
        except Exception as exc:  # noqa: BLE001 - a scrape reports the ledger down, it does not fail
            logger.warning("metrics: the ledger did not answer (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        for state in JobState:
            by_state.add_metric([state.value], counts.get(state.value, 0))
        depth.add_metric([], counts.get(JobState.QUEUED.value, 0))
        age = 0.0
        if first is not None:
            first = first if first.tzinfo else first.replace(tzinfo=dt.UTC)
            age = max(0.0, (utcnow() - first).total_seconds())
        oldest.add_metric([], age)
        up.add_metric([], 1)
        yield from (by_state, depth, oldest, up)
        yield from self._triage()

    def _triage(self) -> Iterator[Metric]:
        """Triage notifications by state (pending, delivered, dead) and studies by triage level."""
        notices = GaugeMetricFamily(
            "neuroradix_notifications", "Triage notifications in the outbox by state", labels=["state"]
        )
        levels = GaugeMetricFamily("neuroradix_triage_studies", "Studies by triage level", labels=["level"])
        try:
            store = TriageStore(self.ledger)
            delivery_counts, level_counts = store.delivery_counts(), store.level_counts()
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
            logger.warning("metrics: the triage tables did not answer (%s)", type(exc).__name__)
            return
        for state in DeliveryState:
            notices.add_metric([state.value], delivery_counts.get(state.value, 0))
        for level, count in sorted(level_counts.items()):
            levels.add_metric([level], count)
        yield from (notices, levels)


# --- the worker side ---------------------------------------------------------------------------
def _bound(method: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a call of ``Ledger.<method>`` by name (robust to positional or keyword use)."""
    bound = inspect.signature(method).bind(None, *args, **kwargs)
    return dict(bound.arguments)


def record_gpu_peak(worker_id: str) -> None:
    """Set the GPU memory peak of each CUDA device this process used (nothing without torch/CUDA)."""
    torch = sys.modules.get("torch")  # never imported here: only a process that runs torch has a peak
    if torch is None:
        return
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return
        for index in range(torch.cuda.device_count()):
            GPU_MEMORY_PEAK.labels(worker_id, f"cuda:{index}").set(torch.cuda.max_memory_allocated(index))
    except Exception:  # noqa: BLE001 - a metric must never fail a job
        logger.debug("metrics: no GPU memory figure", exc_info=True)


def observe_timings(timings: Optional[dict]) -> None:
    """One histogram observation per stage of a job's ``{stage: seconds}`` (``total`` included)."""
    for stage, seconds in (timings or {}).items():
        if isinstance(seconds, (int, float)):
            STAGE_SECONDS.labels(stage).observe(float(seconds))


class MeteredLedger(Ledger):
    """The ledger a worker writes through: each recorded outcome also updates the metrics.

    Counted only once the ledger has accepted the write (a lost lease counts nothing), so the
    counters say what the ledger says. Claims set the log context (job id, study hash).
    """

    def claim(self, worker_id: str, lease_seconds: float) -> Optional[Job]:
        """Claim (:meth:`Ledger.claim`); counts a take-over, stamps the heartbeat, sets the log context."""
        WORKER_LAST_SEEN.labels(worker_id).set(time.time())
        before = getattr(self, "lease_takeovers", 0)
        job = super().claim(worker_id, lease_seconds)
        taken_over = getattr(self, "lease_takeovers", 0) - before
        if taken_over > 0:
            LEASE_TAKEOVERS.inc(taken_over)
        JOB_ID.set(job.id if job is not None else None)
        STUDY.set(short_hash(job.study_uid) if job is not None else None)
        return job

    def renew(self, job_id: int, worker_id: str, lease_seconds: float) -> None:
        """Renew (:meth:`Ledger.renew`) and stamp the worker's heartbeat."""
        super().renew(job_id, worker_id, lease_seconds)
        WORKER_LAST_SEEN.labels(worker_id).set(time.time())

    def succeed(self, *args: Any, **kwargs: Any) -> Any:
        """Record success (:meth:`Ledger.succeed`), then its stage durations and analyzers."""
        result = super().succeed(*args, **kwargs)
        call = _bound(Ledger.succeed, args, kwargs)
        JOBS_FINISHED.labels(JobState.SUCCEEDED.value).inc()
        observe_timings(call.get("timings"))
        analyzers = (call.get("details") or {}).get("analyzers") or {}
        for name, status in analyzers.items():
            STUDIES.labels(name, str(status)).inc()
        record_gpu_peak(call["worker_id"])
        return result

    def fail(self, *args: Any, **kwargs: Any) -> Any:
        """Record a failure or skip (:meth:`Ledger.fail`), then count it by error class."""
        result = super().fail(*args, **kwargs)
        call = _bound(Ledger.fail, args, kwargs)
        outcome = JobState.SKIPPED if call.get("skipped") else JobState.FAILED
        JOBS_FINISHED.labels(outcome.value).inc()
        if outcome is JobState.FAILED:
            FAILURES.labels(call["error_class"]).inc()
        observe_timings(call.get("timings"))
        record_gpu_peak(call["worker_id"])
        return result

    def _requeued(self, method: Any, state: Any, args: tuple, kwargs: dict) -> None:
        call = _bound(method, args, kwargs)
        if state == JobState.FAILED:
            JOBS_FINISHED.labels(JobState.FAILED.value).inc()
            FAILURES.labels(call["error_class"]).inc()
        else:
            RETRIES.labels(call["error_class"]).inc()

    def retry_later(self, *args: Any, **kwargs: Any) -> Any:
        """Queue again (:meth:`Ledger.retry_later`); a retry, or a failure once attempts are spent."""
        state = super().retry_later(*args, **kwargs)
        self._requeued(Ledger.retry_later, state, args, kwargs)
        return state

    def retry_transient(self, *args: Any, **kwargs: Any) -> Any:
        """Queue again after a transient error (:meth:`Ledger.retry_transient`); counted like retry_later."""
        state = super().retry_transient(*args, **kwargs)
        self._requeued(Ledger.retry_transient, state, args, kwargs)
        return state


# --- registries ---------------------------------------------------------------------------------
def multiprocess_dir(var_dir: Path) -> Path:
    """Where the workers the sidecar starts write their metrics: ``<var>/run/metrics``."""
    return Path(var_dir) / "run" / "metrics"


def prepare_multiprocess_dir(path: Path) -> Path:
    """Empty ``path`` (0700) and point ``PROMETHEUS_MULTIPROC_DIR`` at it for processes started after.

    Called once by the process that starts the workers, before it starts them: the files of an
    earlier run would otherwise add to this run's counters.
    """
    path = Path(path).resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700, parents=True)
    # prometheus_client reads this folder only from its environment, in this process and the workers it starts.
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def node_registry(ledger: Optional[Ledger], worker_metrics_dir: Optional[Path]) -> CollectorRegistry:
    """A registry for one scrape: the ledger's view plus the workers' files (when the folder exists).

    Without a folder (no multiprocess workers) this process's own metrics are included instead.
    """
    registry = CollectorRegistry(auto_describe=False)
    if worker_metrics_dir is not None and Path(worker_metrics_dir).is_dir():
        multiprocess.MultiProcessCollector(registry, path=str(worker_metrics_dir))
    else:
        for collector in (JOBS_FINISHED, FAILURES, RETRIES, LEASE_TAKEOVERS, STUDIES, STAGE_SECONDS):
            registry.register(collector)
        for gauge in (WORKER_LAST_SEEN, GPU_MEMORY_PEAK):
            registry.register(gauge)
    if ledger is not None:
        registry.register(LedgerCollector(ledger))
    return registry


def worker_registry() -> CollectorRegistry:
    """What a worker-only host serves: its processes' files in multiprocess mode, else this process's."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, path=folder)
        return registry
    return REGISTRY


def metric_names() -> set[str]:
    """Every sample name the node exports (``_total``, ``_bucket`` ... included): for dashboards' tests."""
    names: set[str] = set(LEDGER_METRICS)
    for metric in (
        JOBS_FINISHED,
        FAILURES,
        RETRIES,
        LEASE_TAKEOVERS,
        STUDIES,
        STAGE_SECONDS,
        WORKER_LAST_SEEN,
        GPU_MEMORY_PEAK,
    ):
        for family in metric.describe():
            names.add(family.name)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


# --- logs ----------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ job_id, study, exception when known)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id, study = getattr(record, "job_id", None) or JOB_ID.get(), getattr(record, "study", None) or STUDY.get()
        if job_id is not None:
            entry["job_id"] = job_id
        if study is not None:
            entry["study"] = study
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
