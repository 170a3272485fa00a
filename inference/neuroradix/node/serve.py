"""``neuroradix serve``: the sidecar process — the API (with the reconciler) plus supervised workers.

Workers are separate processes (``neuroradix worker``), so a worker that crashes or is killed
takes nothing else down: the supervisor starts a new one, the dead one's lease expires, and its
job is claimed again. Each worker's pid is written to ``<var>/run/worker-<n>.pid``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import uvicorn

from neuroradix.api.app import create_app
from neuroradix.config import Settings

LOG = logging.getLogger(__name__)


class WorkerSupervisor:
    """Keeps ``count`` worker processes running until stopped."""

    def __init__(self, count: int, run_dir: Path, restart_delay: float = 1.0) -> None:
        self.count, self.run_dir, self.restart_delay = count, run_dir, restart_delay
        self.processes: list[Optional[subprocess.Popen]] = [None] * count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self.restarts = 0

    def _spawn(self, index: int) -> None:
        process = subprocess.Popen([sys.executable, "-m", "neuroradix.cli", "worker"], env=os.environ.copy())
        self.processes[index] = process
        (self.run_dir / f"worker-{index}.pid").write_text(str(process.pid))
        LOG.info("worker %d started (pid %d)", index, process.pid)

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            self._spawn(i)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for i, process in enumerate(self.processes):
                if process is not None and process.poll() is not None and not self._stop.is_set():
                    LOG.warning(
                        "worker %d (pid %d) exited with %s; starting a new one", i, process.pid, process.returncode
                    )
                    self.restarts += 1
                    time.sleep(self.restart_delay)
                    self._spawn(i)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for i, process in enumerate(self.processes):
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
            (self.run_dir / f"worker-{i}.pid").unlink(missing_ok=True)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the API in this process and the workers beside it, until SIGTERM/SIGINT.

    Everything it and its workers write (ledger, logs, pid files) is the owner's only (umask 077).
    """
    os.umask(0o077)
    settings.var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    supervisor = WorkerSupervisor(settings.workers, settings.var_dir / "run")
    app = create_app(settings)
    supervisor.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    finally:
        supervisor.stop()
