"""``neuroradix worker``: settings from an env file, no API token, several workers under the one supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuroradix import cli
from neuroradix.jobs.ledger import Ledger
from neuroradix.runtime.worker_host import check_ledger_for_worker

TOKENS = (
    "SIDECAR_TOKEN",
    "NEURORADIX_SIDECAR_TOKEN",
    "NEURORADIX_SIDECAR_PLUGIN_TOKEN",
    "NEURORADIX_SIDECAR_READER_TOKEN",
)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_worker_host_runs_supervised_workers_from_an_env_file_without_an_api_token(tmp_path):
    var = tmp_path / "var"
    var.mkdir()
    ledger_url = f"sqlite:///{var / 'ledger.sqlite'}"
    Ledger(ledger_url)  # the SQLite file must exist on this host
    env_file = tmp_path / "worker.env"
    env_file.write_text(
        "# as `make up` writes it: no API token\n"
        f"NEURORADIX_LEDGER_URL='{ledger_url}'\n"
        "NEURORADIX_ORTHANC_URL='http://127.0.0.1:9'\n"
        "NEURORADIX_ORTHANC_USER='neuroradix-sidecar'\n"
        "NEURORADIX_ORTHANC_PASSWORD='pw-pw-pw'\n"
        f"NEURORADIX_VAR_DIR='{var}'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in TOKENS and not k.startswith("NEURORADIX_")}
    command = [sys.executable, "-m", "neuroradix.cli", "worker", "--env-file", str(env_file), "--count", "2"]
    host = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pid_files = lambda: sorted((var / "run").glob("workers-*/worker-*.pid"))  # noqa: E731
        _wait_for(lambda: len(pid_files()) == 2 or host.poll() is not None, 120, "two workers")
        assert host.poll() is None, host.stdout.read() if host.stdout else ""
        pids = [int(p.read_text()) for p in pid_files()]
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in pids]
        for index, argv in enumerate(commands):  # each worker reads the same file, and has its own index
            assert str(env_file).encode() in argv and argv[-3:-1] == [b"--index", str(index).encode()]
        owners = [Path(f"/proc/{pid}/environ").read_bytes() for pid in pids]
        assert not any(b"SIDECAR_TOKEN" in e for e in owners)  # no token was made up to pass validation
    finally:
        host.send_signal(signal.SIGTERM)
        output, _ = host.communicate(timeout=90)
    assert host.returncode == 0, output
    assert not list((var / "run").glob("workers-*/worker-*.pid"))  # the supervisor cleaned up


def test_worker_refuses_a_missing_env_file(tmp_path, capsys):
    assert cli.main(["worker", "--env-file", str(tmp_path / "nope.env")]) == 2
    assert "no such env file" in capsys.readouterr().err


def test_a_sqlite_ledger_elsewhere_is_refused(tmp_path):
    with pytest.raises(Exception, match="not on this host"):
        check_ledger_for_worker(f"sqlite:///{tmp_path / 'absent.sqlite'}")
