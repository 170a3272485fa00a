"""Helpers of the training tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from neuroradix_train.evaluation.plots import read_jsonl


def kill_after_steps(cmd: list[str], steps_file: Path, steps: int, timeout: float = 1800) -> None:
    """Run a training command and SIGKILL it once ``steps_file`` logs ``steps`` optimiser steps."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{root / 'inference'}:{root / 'training'}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuroradix_train.cli", *cmd],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if steps_file.is_file() and len(read_jsonl(steps_file)) >= steps:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
