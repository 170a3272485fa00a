"""The one worker supervisor: keeps worker processes running, restarting crashed ones with backoff.

Workers are separate processes (``neuroradix worker --index n``), so a worker that crashes, is
killed or ends itself after a job ran past its time limit takes nothing else down: the supervisor
starts a new one (with backoff while they keep crashing), the dead one's lease expires, and its job
is claimed again. Each worker's pid is written to ``<run_dir>/worker-<n>.pid``. Used by the sidecar
(:mod:`neuroradix.runtime.sidecar`, ``neuroradix serve``) and by a worker host
(:mod:`neuroradix.runtime.worker_host`, ``neuroradix worker --count N``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

logger = logging.getLogger(__name__)


class WorkerSupervisor:
    """Keeps ``count`` worker processes running until stopped, restarting crashed ones with backoff.

    A worker that exits is started again after ``backoff_initial`` seconds, doubling for each
    exit in a row up to ``backoff_max``; a worker that ran ``stable_seconds`` before it exited
    starts the count again. So a worker that crashes at once (a broken ledger, a bad setting)
    is restarted every minute rather than every second, and one that ended on purpose (a job
    timed out, see :mod:`neuroradix.jobs.worker`) is back within a second.

    Parameters
    ----------
    count:
        How many workers to keep running.
    run_dir:
        Where each worker's pid is written (``worker-<n>.pid``).
    command:
        The worker's command line, the same for every worker; by default
        ``python -m neuroradix.cli worker`` with ``worker_args`` and ``--index <n>`` (the worker's id).
    worker_args:
        Options of the default command (``--env-file``, ``--device``); not with ``command``.
    env:
        The workers' environment; this process's by default.
    backoff_initial, backoff_max:
        The first restart delay and its cap, in seconds.
    stable_seconds:
        How long a worker must have run for its next restart to wait ``backoff_initial`` again.
    """

    def __init__(
        self,
        count: int,
        run_dir: Path,
        *,
        command: Optional[Sequence[str]] = None,
        worker_args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        stable_seconds: float = 60.0,
        check_seconds: float = 0.5,
    ) -> None:
        if count < 0:  # 0: the sidecar runs only the API and the reconciler (workers run elsewhere)
            raise ValueError(f"count must not be negative, got {count}")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(f"need 0 < backoff_initial <= backoff_max, got {backoff_initial} and {backoff_max}")
        self.count, self.run_dir = count, run_dir
        if command is not None and worker_args:
            raise TypeError("give command or worker_args, not both")
        self.command = None if command is None else list(command)
        self.worker_args = list(worker_args)
        self.env = dict(os.environ if env is None else env)
        self.backoff_initial, self.backoff_max, self.stable_seconds = backoff_initial, backoff_max, stable_seconds
        self.check_seconds = check_seconds
        self.processes: list[Optional[subprocess.Popen]] = [None] * count
        self._started_at = [0.0] * count
        self._delay = [backoff_initial] * count
        self._restart_at: list[Optional[float]] = [None] * count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self.restarts = 0
        self.delays: list[float] = []  # every restart delay chosen, in order (what an operator reads in the log)

    def command_for(self, index: int) -> list[str]:
        """The command line of worker ``index``."""
        if self.command is not None:
            return list(self.command)
        return [sys.executable, "-m", "neuroradix.cli", "worker", *self.worker_args, "--index", str(index)]

    def _spawn(self, index: int) -> None:
        process = subprocess.Popen(self.command_for(index), env=self.env)
        self.processes[index] = process
        self._started_at[index] = time.monotonic()
        (self.run_dir / f"worker-{index}.pid").write_text(str(process.pid))
        logger.info("worker %d started (pid %d)", index, process.pid)

    def start(self) -> None:
        """Start the workers and the thread that watches them."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            self._spawn(i)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_seconds):
            now = time.monotonic()
            for i, process in enumerate(self.processes):
                restart_at = self._restart_at[i]
                if restart_at is not None:
                    if now >= restart_at and not self._stop.is_set():
                        self._restart_at[i] = None
                        self.restarts += 1
                        self._spawn(i)
                    continue
                if process is None or process.poll() is None:
                    continue
                if now - self._started_at[i] >= self.stable_seconds:
                    self._delay[i] = self.backoff_initial  # it had run stably: a fresh start
                delay = self._delay[i]
                self._delay[i] = min(delay * 2, self.backoff_max)
                self.delays.append(delay)
                self._restart_at[i] = now + delay
                logger.warning(
                    "worker %d (pid %d) exited with %s after %.0f s; starting a new one in %.0f s",
                    i,
                    process.pid,
                    process.returncode,
                    now - self._started_at[i],
                    delay,
                )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching, end the workers (SIGTERM, then SIGKILL after ``timeout``) and remove their pid files."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
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
                process.wait()
            (self.run_dir / f"worker-{i}.pid").unlink(missing_ok=True)
