"""The worker supervisor restarts crashed workers with a doubling backoff, reset after a stable run."""

from __future__ import annotations

import sys
import time

import pytest

from neuroradix.runtime.supervisor import WorkerSupervisor


def _run_until(supervisor: WorkerSupervisor, restarts: int, timeout: float = 60.0) -> None:
    supervisor.start()
    try:
        deadline = time.monotonic() + timeout
        while len(supervisor.delays) < restarts and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        supervisor.stop(timeout=5)
    assert len(supervisor.delays) >= restarts, f"only {supervisor.delays} in {timeout} s"


def test_a_worker_that_exits_at_once_is_restarted_with_doubling_backoff(tmp_path):
    supervisor = WorkerSupervisor(
        1,
        tmp_path / "run",
        command=[sys.executable, "-c", "raise SystemExit(3)"],
        backoff_initial=0.1,
        backoff_max=0.8,
        stable_seconds=60,
        check_seconds=0.02,
    )
    _run_until(supervisor, 6)
    assert supervisor.delays[:6] == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    assert supervisor.restarts >= 5
    assert not (tmp_path / "run" / "worker-0.pid").exists()  # stop() cleans up


def test_a_worker_that_ran_stably_restarts_after_the_first_delay_again(tmp_path):
    supervisor = WorkerSupervisor(
        1,
        tmp_path / "run",
        command=[sys.executable, "-c", "import time; time.sleep(0.5)"],
        backoff_initial=0.1,
        backoff_max=0.8,
        stable_seconds=0.3,
        check_seconds=0.02,
    )
    _run_until(supervisor, 3)
    assert supervisor.delays[:3] == [0.1, 0.1, 0.1]


def test_stop_ends_running_workers(tmp_path):
    supervisor = WorkerSupervisor(
        2, tmp_path / "run", command=[sys.executable, "-c", "import time; time.sleep(60)"], check_seconds=0.02
    )
    supervisor.start()
    pids = [p.pid for p in supervisor.processes if p is not None]
    assert len(pids) == 2 and all((tmp_path / "run" / f"worker-{i}.pid").exists() for i in range(2))
    supervisor.stop(timeout=5)
    assert all(p is not None and p.poll() is not None for p in supervisor.processes)
    assert supervisor.delays == []


@pytest.mark.parametrize("kwargs", [{"count": -1}, {"backoff_initial": 0}, {"backoff_initial": 2, "backoff_max": 1}])
def test_settings_are_checked(tmp_path, kwargs):
    with pytest.raises(ValueError):
        WorkerSupervisor(**{"count": 1, "run_dir": tmp_path, **kwargs})


def test_no_workers_is_allowed_for_an_api_only_sidecar(tmp_path):
    """``NEURORADIX_WORKERS=0``: the sidecar runs the API and the reconciler, workers run elsewhere."""
    supervisor = WorkerSupervisor(0, tmp_path / "run")
    supervisor.start()
    supervisor.stop(timeout=5)
    assert supervisor.processes == []


def test_default_command_is_the_worker_entry_point_with_the_given_options_and_its_index(tmp_path):
    supervisor = WorkerSupervisor(2, tmp_path / "run", worker_args=["--env-file", "/x/worker.env", "--device", "cpu"])
    assert supervisor.command_for(1) == [
        sys.executable,
        "-m",
        "neuroradix.cli",
        "worker",
        "--env-file",
        "/x/worker.env",
        "--device",
        "cpu",
        "--index",
        "1",
    ]
    with pytest.raises(TypeError):
        WorkerSupervisor(1, tmp_path, command=["true"], worker_args=["--device", "cpu"])


def test_workers_get_the_environment_they_are_given_not_this_process(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORADIX_SIDECAR_TOKEN", "not-for-workers-0123456789")
    out = tmp_path / "env.txt"
    code = f"import os; open({str(out)!r}, 'w').write(os.environ.get('A', '') + '|' + os.environ.get('NEURORADIX_SIDECAR_TOKEN', ''))"
    supervisor = WorkerSupervisor(1, tmp_path / "run", command=[sys.executable, "-c", code], env={"A": "given"})
    supervisor.start()
    deadline = time.monotonic() + 30
    while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    supervisor.stop(timeout=5)
    assert out.read_text() == "given|"
