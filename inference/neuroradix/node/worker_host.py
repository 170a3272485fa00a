"""``neuroradix worker``: worker processes only (no API, no reconciler) that join a node's queue.

A host with GPUs joins a node by running ``neuroradix worker --env-file worker.env --device
cuda:0`` (one command per GPU, or ``--count N`` processes on one device): the ``NEURORADIX_*``
settings say where the ledger (PostgreSQL), the PACS and its sidecar account are; ``make up``
writes them to ``var/worker.env``. The reconciler runs only in the sidecar. Each worker's id
names its host: ``<hostname>-<pid>-<n>`` (the lease owner in the ledger, the ``worker`` label of
the metrics).

A SQLite ledger is one file on one host: a worker is refused one unless the file exists here.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

import sqlalchemy as sa
from prometheus_client import start_http_server

from neuroradix.config import PipelineSettings, Settings
from neuroradix.errors import ConfigError
from neuroradix.jobs.metrics import MeteredLedger, prepare_multiprocess_dir, worker_registry
from neuroradix.jobs.worker import Worker
from neuroradix.node.envfile import read_env_file

LOG = logging.getLogger(__name__)


def load_env_file(path: Path) -> list[str]:
    """Put the ``KEY=VALUE`` lines of ``path`` into the environment; a variable already set wins.

    Returns the keys taken from the file. Raises :class:`ConfigError` when the file is missing.
    """
    if not Path(path).is_file():
        raise ConfigError(f"no such env file: {path}")
    taken = []
    for key, value in read_env_file(Path(path)).items():
        if key not in os.environ:
            os.environ[key] = value
            taken.append(key)
    return taken


def without_api_token() -> None:
    """Settings require the API's admin token, which a worker never uses: without one it gets a random one.

    So ``worker.env`` and a worker host need not hold the node's admin token.
    """
    if "NEURORADIX_SIDECAR_TOKEN" not in os.environ and "SIDECAR_TOKEN" not in os.environ:
        os.environ["NEURORADIX_SIDECAR_TOKEN"] = secrets.token_urlsafe(32)


def worker_id(index: int = 0) -> str:
    """``<hostname>-<pid>-<index>``: unique per process, and it says which host holds a lease."""
    return f"{socket.gethostname()}-{os.getpid()}-{index}"


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


def run_worker(settings: Settings, index: int = 0) -> None:
    """One worker in this process, until SIGTERM/SIGINT."""
    check_ledger_for_worker(settings.resolved_ledger_url)
    ledger = MeteredLedger(settings.resolved_ledger_url)
    Worker(settings, ledger=ledger, worker_id=worker_id(index)).run_forever()


class WorkerGroup:
    """``count`` worker processes (``neuroradix worker --index n``), restarted when one dies."""

    def __init__(self, count: int, restart_delay: float = 1.0) -> None:
        self.count, self.restart_delay = count, restart_delay
        self.processes: list[Optional[subprocess.Popen]] = [None] * count
        self._stop = threading.Event()

    def _spawn(self, index: int) -> None:
        command = [sys.executable, "-m", "neuroradix.cli", "worker", "--index", str(index)]
        self.processes[index] = subprocess.Popen(command, env=os.environ.copy())
        LOG.info("worker process %d started (pid %d)", index, self.processes[index].pid)  # type: ignore[union-attr]

    def stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> None:
        """Start the processes and keep them running until SIGTERM/SIGINT; then stop them."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for index in range(self.count):
            self._spawn(index)
        while not self._stop.wait(0.5):
            for index, process in enumerate(self.processes):
                if process is not None and process.poll() is not None and not self._stop.is_set():
                    LOG.warning("worker process %d exited with %s; starting a new one", index, process.returncode)
                    self._stop.wait(self.restart_delay)
                    self._spawn(index)
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in self.processes:
            if process is None:
                continue
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def run_worker_host(settings: Settings, count: int, metrics_port: Optional[int]) -> None:
    """``count`` worker processes, with their metrics on ``127.0.0.1:metrics_port`` when given."""
    check_ledger_for_worker(settings.resolved_ledger_url)
    folder = Path(settings.var_dir) / "run" / f"metrics-{socket.gethostname()}-{os.getpid()}"
    prepare_multiprocess_dir(folder)
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=worker_registry())
        LOG.info("worker metrics on http://127.0.0.1:%d/metrics", metrics_port)
    try:
        WorkerGroup(count).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


WORKER_ENV_KEYS = (
    "NEURORADIX_LEDGER_URL",
    "NEURORADIX_ORTHANC_URL",
    "NEURORADIX_ORTHANC_USER",
    "NEURORADIX_ORTHANC_PASSWORD",
    "NEURORADIX_UID_KEY",
    "NEURORADIX_VAR_DIR",
)
PIPELINE_KEYS = tuple(f"NEURORADIX_{name.upper()}" for name in PipelineSettings.model_fields)


def worker_env_values(sidecar_env: dict[str, str], ledger_url: str) -> dict[str, str]:
    """What ``var/worker.env`` holds: what a worker elsewhere needs to join (no API token).

    The ledger URL, Orthanc's URL and the sidecar's Orthanc account, the UID key, the var
    directory, and the pipeline settings the sidecar runs with (a worker must produce the same
    pipeline version). ``NEURORADIX_VAR_DIR`` is the sidecar's: a worker in a second shell shares
    it; on another host it is where that worker keeps job results (see docs/scale-out.md).
    """
    values = {key: sidecar_env[key] for key in (*WORKER_ENV_KEYS, *PIPELINE_KEYS) if sidecar_env.get(key)}
    values["NEURORADIX_LEDGER_URL"] = ledger_url
    return values
