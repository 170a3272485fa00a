"""``neuroradix worker``: worker processes only (no API, no reconciler) that join a node's queue.

A host with GPUs joins a node by running ``neuroradix worker --env-file worker.env --device
cuda:0`` (one command per GPU, or ``--count N`` processes on one device): the ``NEURORADIX_*``
settings say where the ledger (PostgreSQL), the PACS and its sidecar account are; ``make up``
writes them to ``var/worker.env``. A worker's settings hold no API token
(:class:`~neuroradix.config.WorkerSettings`). The reconciler runs only in the sidecar. Each
worker's id names its host (:func:`neuroradix.jobs.worker.make_worker_id`: the lease owner in the
ledger, the ``worker`` label of the metrics). Several workers on one host run under the same
supervisor as the sidecar's (:class:`~neuroradix.runtime.supervisor.WorkerSupervisor`).

A SQLite ledger is one file on one host: a worker is refused one unless the file exists here.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Optional, Sequence

import sqlalchemy as sa
from prometheus_client import start_http_server

from neuroradix.config import WorkerSettings
from neuroradix.errors import ConfigError
from neuroradix.jobs.metrics import MeteredLedger, prepare_multiprocess_dir, worker_registry
from neuroradix.jobs.worker import Worker, make_worker_id
from neuroradix.runtime.supervisor import WorkerSupervisor

logger = logging.getLogger(__name__)


def check_ledger_for_worker(url: str) -> None:
    """Refuse a SQLite ledger that is not a file on this host (workers elsewhere need PostgreSQL).

    Raises
    ------
    ConfigError
        With what to do instead.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    database = parsed.database or ""
    if database in ("", ":memory:") or not Path(database).is_file():
        raise ConfigError(
            f"the ledger is a SQLite file that is not on this host ({database or 'in memory'}): "
            "a SQLite ledger serves workers on its own host only. Run the node on PostgreSQL "
            "(make up LEDGER=postgresql, or NEURORADIX_LEDGER_URL=postgresql://...) and use its var/worker.env"
        )


def run_worker(settings: WorkerSettings, index: int = 0) -> None:
    """One worker in this process, until SIGTERM/SIGINT."""
    check_ledger_for_worker(settings.resolved_ledger_url)
    ledger = MeteredLedger(settings.resolved_ledger_url)
    Worker(settings, ledger=ledger, worker_id=make_worker_id(index)).run_forever()


def run_worker_host(
    settings: WorkerSettings, count: int, metrics_port: Optional[int], worker_args: Sequence[str] = ()
) -> None:
    """``count`` supervised worker processes until SIGTERM/SIGINT, with their metrics on ``127.0.0.1:metrics_port``.

    Parameters
    ----------
    settings
        The workers' settings (the ledger is checked here, once, before any worker starts).
    count
        How many worker processes to keep running.
    metrics_port
        Serve the workers' Prometheus metrics on this loopback port; None: no metrics server.
    worker_args
        Options each worker's command line repeats (``--env-file``, ``--device``), so every worker
        reads the same settings as this process.
    """
    check_ledger_for_worker(settings.resolved_ledger_url)
    host = f"{socket.gethostname()}-{os.getpid()}"
    folder = Path(settings.var_dir) / "run" / f"metrics-{host}"
    prepare_multiprocess_dir(folder)  # the workers started below inherit PROMETHEUS_MULTIPROC_DIR
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=worker_registry())
        logger.info("worker metrics on http://127.0.0.1:%d/metrics", metrics_port)
    supervisor = WorkerSupervisor(
        count,
        Path(settings.var_dir) / "run" / f"workers-{host}",
        worker_args=worker_args,
        backoff_max=settings.worker_restart_max_seconds,
        stable_seconds=settings.worker_stable_seconds,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervisor.start()
    try:
        stop.wait()
    finally:
        supervisor.stop(timeout=60.0)
        shutil.rmtree(folder, ignore_errors=True)
