"""Scale-out on one machine: one Orthanc, one PostgreSQL ledger, the sidecar (with its one worker)
and two ``neuroradix worker`` processes joined through ``worker.env``, as a second host would.

30 small studies arrive at once; one worker is SIGKILLed while it holds a job. Every study must
end ``succeeded`` exactly once: one job row each, exactly one SEG/SR/PM/PDF series each in the
PACS with no duplicate instance, and the metrics show 30 succeeded jobs and a lease take-over.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuroradix.deploy.envfile import worker_env_values, write_env_file
from neuroradix.deploy.orthanc import free_port
from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.samples.phantom import thorax_phantom
from tests.harness import EphemeralNode, require_orthanc
from tests.jobs.conftest import PostgresCluster, start_postgres_cluster

pytestmark = pytest.mark.slow

STUDIES = 30
LEASE_SECONDS = 6.0
FAST_JOBS = {  # tiny studies, a short lease, an uncompressed SEG: the test is about the queue, not the pixels
    "NEURORADIX_LEASE_SECONDS": str(LEASE_SECONDS),
    "NEURORADIX_POLL_SECONDS": "0.2",
    "NEURORADIX_RETRY_BASE_SECONDS": "1",
    "NEURORADIX_SEG_COMPRESS": "false",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    started = start_postgres_cluster()
    yield started
    started.stop()


def _metrics(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def _sample(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)"
    found = re.findall(r"^" + pattern + "$", text, flags=re.M)
    return sum(float(v) for v in found)


def _start_worker(env_file: Path, metrics_port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURORADIX_") and k != "SIDECAR_TOKEN"}
    env.update(FAST_JOBS)
    command = [sys.executable, "-m", "neuroradix.cli", "worker", "--env-file", str(env_file)]
    command += ["--device", "cpu", "--metrics-port", str(metrics_port)]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_two_worker_hosts_one_killed_every_study_succeeds_once(cluster, tmp_path_factory):
    require_orthanc()
    root = Path(tmp_path_factory.mktemp("scale"))
    ledger_url = cluster.ensure_database("scale_ledger", "scale_ledger", "scale-pw-0123456789")
    node = EphemeralNode(
        root,
        lease_seconds=LEASE_SECONDS,
        reconcile_seconds=3600,
        extra_env={"NEURORADIX_LEDGER_URL": ledger_url, "NEURORADIX_WORKERS": "1", **FAST_JOBS},
    )
    env_file = root / "worker.env"
    write_env_file(env_file, worker_env_values(node.env, ledger_url), "test worker.env")
    ports = [free_port(), free_port()]
    workers: list[subprocess.Popen] = []
    node.start()
    try:
        workers = [_start_worker(env_file, port, root / f"worker-{i}.log") for i, port in enumerate(ports)]
        studies = []
        for n in range(STUDIES):
            volume, _ = thorax_phantom(
                shape=(26, 48, 48), spacing=(5.0, 5.0, 5.0), seed=n
            )  # 5 mm: thicker slices get no map
            datasets = volume_to_ct_series(volume, uid_seed=f"it-scale-{n}")
            studies.append(str(datasets[0].StudyInstanceUID))
            node.upload(datasets)

        # Kill the worker process that holds a job, once a few studies are done.
        killed = None
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline:
            with cluster.admin("scale_ledger") as conn:
                done = conn.execute("SELECT count(*) FROM jobs WHERE state = 'succeeded'").fetchone()[0]
                owners = [r[0] for r in conn.execute("SELECT lease_owner FROM jobs WHERE state = 'running'")]
            if done >= 3 and owners:
                pid = int(owners[0].rsplit("-", 2)[1])  # <hostname>-<pid>-<n>
                os.kill(pid, signal.SIGKILL)
                killed = owners[0]
            time.sleep(0.1)
        assert killed is not None, "no job was ever seen running"

        jobs = [node.wait_job(uid, timeout=300) for uid in studies]
        assert [j["state"] for j in jobs] == ["succeeded"] * STUDIES, [j for j in jobs if j["state"] != "succeeded"]
        with cluster.admin("scale_ledger") as conn:
            rows = conn.execute("SELECT study_uid, count(*) FROM jobs GROUP BY study_uid").fetchall()
        assert sorted(r[0] for r in rows) == sorted(studies) and {r[1] for r in rows} == {1}
        reference = None
        for uid, job in zip(studies, jobs):
            outputs = [s for s in node.series(uid) if s.manufacturer == "Neuro Radix"]
            modalities = sorted(s.modality for s in outputs)
            assert len(outputs) == 4 and len(set(modalities)) == 4, (uid, modalities)
            reference = reference or modalities
            assert modalities == reference
            assert sum(s.n_instances or 0 for s in outputs) == len(job["output_uids"]), uid  # no duplicates

        sidecar = _metrics(node.config.sidecar_url + "/metrics", node.config.sidecar_reader_token)
        assert _sample(sidecar, "neuroradix_jobs", 'state="succeeded"') == STUDIES
        assert _sample(sidecar, "neuroradix_queue_depth") == 0
        from_workers = [_metrics(f"http://127.0.0.1:{port}/metrics") for port in ports]
        everyone = [sidecar, *from_workers]  # the sidecar's own worker reports through its /metrics
        assert sum(_sample(text, "neuroradix_lease_takeovers_total") for text in everyone) >= 1
        finished = [_sample(t, "neuroradix_jobs_finished_total", 'outcome="succeeded"') for t in everyone]
        assert sum(finished) == STUDIES and min(finished[1:]) > 0, finished  # the kill lost nothing, both hosts worked
    finally:
        for process in workers:
            _stop(process)
        node.stop()
