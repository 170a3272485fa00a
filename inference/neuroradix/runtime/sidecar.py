"""``neuroradix serve``: the sidecar process -- the API (with the reconciler) plus supervised workers."""

from __future__ import annotations

import logging
import os

import uvicorn

from neuroradix.api.app import create_app
from neuroradix.config import Settings
from neuroradix.runtime.supervisor import WorkerSupervisor

logger = logging.getLogger(__name__)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the API in this process and the workers beside it, until SIGTERM/SIGINT.

    Everything it and its workers write (ledger, logs, pid files) is the owner's only (umask 077).
    """
    os.umask(0o077)
    settings.var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    supervisor = WorkerSupervisor(
        settings.workers,
        settings.var_dir / "run",
        backoff_max=settings.worker_restart_max_seconds,
        stable_seconds=settings.worker_stable_seconds,
    )
    app = create_app(settings)
    supervisor.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    finally:
        supervisor.stop()
