"""The fault matrix against a real Orthanc: every study ends with its results in the PACS, once.

Most faults are injected at a precise point of a job: the worker runs in this process (its real
:class:`~neuroradix.pacs.dicomweb.PacsClient` wrapped by :class:`Faults`, which runs a hook just
before a named call -- e.g. shuts Orthanc down as the series is fetched) against an Orthanc of its
own, with short backoffs (0.2 s doubling to 1 s) and a short lease. The sidecar process is not
started for these; ``test_sidecar_killed_mid_job_loses_nothing`` uses the shared node of
``conftest.py`` (its worker-SIGKILL twin is ``test_node.py::test_worker_killed_mid_job_loses_nothing``).
The matrix with the test for each row is in ``docs/reliability.md``.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pydicom
import pytest
import sqlalchemy as sa

from neuroradix import MANUFACTURER
from neuroradix.analyzers.registry import build_analyzers
from neuroradix.config import Settings
from neuroradix.errors import LedgerUnavailableError, PartialStoreError
from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.jobs.ledger import Job, JobState, Ledger
from neuroradix.jobs.reconciler import requeue_gave_up, verify_results
from neuroradix.jobs.worker import EXIT_TIMED_OUT, Worker
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.samples.phantom import thorax_phantom
from tests.factory import ct_series
from tests.harness import EphemeralNode, require_orthanc

# About the smallest phantom the lung analyzer accepts (~3 s a job), with 5 mm slices: thicker ones
# get no low-attenuation map (docs/lung-analyzer.md), and every fault here must keep all four series.
SHAPE, SPACING = (32, 48, 48), (5.0, 6.0, 6.0)
OUTPUT_SERIES = 4  # SEG, SR, Parametric Map, PDF


# --- the real Orthanc, and faults at chosen points -------------------------------------------
@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[EphemeralNode]:
    """An Orthanc of the node's configuration, without the sidecar (the tests run the worker here)."""
    require_orthanc()
    node = EphemeralNode(tmp_path_factory.mktemp("faults"), plugin_reaches_sidecar=False)
    node.orthanc.start(timeout=60)
    yield node
    node.orthanc.stop()


@pytest.fixture(scope="module")
def volume():
    return thorax_phantom(shape=SHAPE, spacing=SPACING)[0]


class Faults:
    """The real PACS client; ``before[name]`` runs once just before the next call of method ``name``."""

    def __init__(self, real: PacsClient) -> None:
        self.real = real
        self.before: dict[str, Callable[[], None]] = {}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            hook = self.before.pop(name, None)
            if hook is not None:
                hook()
            return method(*args, **kwargs)

        return call


class Outage:
    """Shuts the node's Orthanc down now and starts it again after ``seconds`` (in a thread)."""

    def __init__(self, node: EphemeralNode, seconds: float) -> None:
        self.node, self.seconds = node, seconds
        self.thread: Optional[threading.Thread] = None
        self.back_at: Optional[float] = None

    def __call__(self) -> None:
        self.node.orthanc.stop()
        self.thread = threading.Thread(target=self._back, daemon=True)
        self.thread.start()

    def _back(self) -> None:
        time.sleep(self.seconds)
        self.node.orthanc.start(timeout=60)
        self.back_at = time.monotonic()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(90)


class Rig:
    """A worker in this process against the real Orthanc, with its own ledger."""

    def __init__(self, node: EphemeralNode, var_dir: Path, **overrides: Any) -> None:
        user, password = node.accounts()["sidecar"]
        self.settings = Settings(
            orthanc_url=node.config.orthanc_url,
            orthanc_user=user,
            orthanc_password=password,
            sidecar_token="t" * 20,
            uid_key=node.config.uid_key,
            var_dir=var_dir,
            lease_seconds=3.0,
            poll_seconds=0.1,
            retry_base_seconds=0.2,
            retry_max_seconds=1.0,
            retry_jitter=0.0,
            http_timeout_seconds=10.0,
            reconcile_settle_seconds=0.0,
            **overrides,
        )
        self.node = node
        self.ledger = Ledger(self.settings.resolved_ledger_url)
        self.pacs = Faults(PacsClient(self.settings.dicomweb_url, user, password, timeout=10))
        self.exits: list[int] = []
        self.worker = Worker(
            self.settings, ledger=self.ledger, pacs=self.pacs, worker_id="w1", exit_process=self.exits.append
        )

    def send(self, datasets: list[pydicom.Dataset]) -> Job:
        self.node.upload(datasets)
        job, _ = self.ledger.enqueue(str(datasets[0].StudyInstanceUID), self.settings.pipeline_version)
        return job

    def drain(self, timeout: float = 90.0) -> None:
        """Run jobs until none is queued or running (the ledger refusing a claim is waited out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.ledger.counts()
            if not counts.get("queued") and not counts.get("running"):
                return
            try:
                if not self.worker.run_once():
                    time.sleep(0.1)
            except LedgerUnavailableError:
                time.sleep(0.2)
        raise TimeoutError(f"jobs still open after {timeout} s: {self.ledger.counts()}")

    def results_once(self, job: Job) -> Job:
        """The job succeeded and the PACS holds each of its output series once, complete and the node's own."""
        done = self.ledger.get(job.id)
        assert done is not None and done.state == JobState.SUCCEEDED, (done.error_class, done.error_message)
        ours = [s for s in self.node.pacs.search_series(done.study_uid) if s.manufacturer == MANUFACTURER]
        assert len(ours) == OUTPUT_SERIES and all(s.n_instances == 1 for s in ours), ours
        assert {s.series_uid for s in ours} == {r["series_instance_uid"] for r in done.output_uids}
        return done


@pytest.fixture()
def rig(orthanc, tmp_path) -> Iterator[Rig]:
    made = Rig(orthanc, tmp_path)
    yield made
    made.ledger.engine.dispose()
    if orthanc.orthanc.process is None or orthanc.orthanc.process.poll() is not None:
        orthanc.orthanc.start(timeout=60)  # a failed test must not leave the next one without a PACS


# --- the PACS away ---------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["retrieve_series", "store"])
def test_orthanc_down_during_fetch_or_during_stow_then_back_gives_results_once(rig, volume, when):
    """``retrieve_series``: the WADO-RS fetch; ``store``: the STOW-RS of the results (after the node's
    old series were looked up). Down before the job: the next test."""
    job = rig.send(volume_to_ct_series(volume, uid_seed=f"fault-down-{when}"))
    # Longer than the PACS client's own quick retries (3 tries, 0.25-1 s apart), so the outage
    # reaches the job's retry policy even when Orthanc restarts fast.
    outage = Outage(rig.node, seconds=5.0)
    rig.pacs.before[when] = outage
    rig.drain()
    outage.join()
    done = rig.results_once(job)
    assert outage.back_at is not None, rig.pacs.calls
    assert done.transient_attempts >= 1 and done.attempts == done.transient_attempts + 1, rig.pacs.calls
    assert done.retrying_since is None and done.error_message is None


def test_orthanc_down_before_the_job_for_longer_than_the_retry_window_then_the_reconciler_requeues(
    orthanc, volume, tmp_path
):
    """Down as the job starts (its first QIDO), longer than the window: failed with the reason; back: requeued."""
    rig = Rig(orthanc, tmp_path, retry_window_seconds=1.0)
    job = rig.send(volume_to_ct_series(volume, uid_seed="fault-window"))
    outage = Outage(rig.node, seconds=4.0)
    rig.pacs.before["search_series"] = outage
    rig.drain()
    failed = rig.ledger.get(job.id)
    assert failed.state == JobState.FAILED and failed.error_message.startswith("gave up after 1 s: QIDO series")
    outage.join()
    rig.pacs.ping()  # the PACS answers again (the reconciler's sweep would have found that out)
    assert requeue_gave_up(rig.settings, rig.ledger) == 1
    rig.drain()
    assert rig.results_once(job).trigger == "reconciler"


@pytest.mark.slow
def test_orthanc_restarted_mid_queue_with_a_burst_of_studies_each_gets_results_once(rig, volume):
    """A burst of small studies; Orthanc goes down and comes back as the fourth is fetched; memory stays flat.

    ``NEURORADIX_FAULT_BURST`` sets the number of studies (6 by default: ~8 s a job on a loaded 2-core CPU).
    """
    count = int(os.environ.get("NEURORADIX_FAULT_BURST", "6"))
    studies = [rig.send(volume_to_ct_series(volume, uid_seed=f"fault-burst-{i}")) for i in range(count)]
    fetches = {"n": 0}
    real_retrieve = rig.pacs.real.retrieve_series
    rss: list[int] = []

    def counting_retrieve(*args: Any, **kwargs: Any) -> Any:
        fetches["n"] += 1
        rss.append(_rss_bytes())
        if fetches["n"] == 4:
            Outage(rig.node, seconds=1.0)()
        return real_retrieve(*args, **kwargs)

    rig.pacs.real.retrieve_series = counting_retrieve  # type: ignore[method-assign]
    rig.drain(timeout=60 + 20 * count)
    for job in studies:
        rig.results_once(job)
    growth = max(rss[3:]) - rss[3]
    print(f"burst of {len(studies)}: RSS {rss[3] / 2**20:.0f} MiB after 3 jobs, +{growth / 2**20:.0f} MiB at most")
    assert growth < 300 * 2**20  # no job's data stays behind (a leak would grow with each study)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_partial_stow_is_transient_and_leaves_nothing_behind(rig, volume):
    """Orthanc refuses the instances of another study in a STOW to this study (FailedSOPSequence)."""
    job = rig.send(volume_to_ct_series(volume, uid_seed="fault-partial"))
    rig.drain()
    done = rig.results_once(job)
    record = next(r for r in done.output_uids if r["modality"] == "SR")
    ours = rig.pacs.real.retrieve_instance(done.study_uid, record["series_instance_uid"], record["sop_instance_uid"])
    rig.pacs.real.delete_series(record["series_instance_uid"])
    stranger = pydicom.Dataset()
    stranger.update(ours)
    stranger.file_meta = ours.file_meta
    stranger.StudyInstanceUID = "2.25.1" + str(int.from_bytes(os.urandom(8), "big"))
    stranger.SOPInstanceUID = "2.25.2" + str(int.from_bytes(os.urandom(8), "big"))
    with pytest.raises(PartialStoreError, match="stored only 1 of 2"):
        rig.pacs.real.store([ours, stranger], done.study_uid)
    left = {s.series_uid for s in rig.node.pacs.search_series(done.study_uid)}
    assert record["series_instance_uid"] not in left  # the part that was stored is deleted again
    # the level-triggered reconciler notices the missing series and the rerun restores it
    assert verify_results(rig.settings, rig.ledger, rig.pacs, 0, 10) == (1, 0)
    rig.drain()
    rerun = rig.results_once(job)
    assert rerun.trigger == "reconciler" and rerun.finished_at > done.finished_at


# --- the job or the ledger -------------------------------------------------------------------
class HangsOnce:
    """An analyzer whose first ``analyze`` call never returns (until the test lets it go)."""

    def __init__(self, real: Any, gate: threading.Event) -> None:
        self.real, self.gate, self.hung = real, gate, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def analyze(self, volume: Any) -> Any:
        if not self.hung:
            self.hung = True
            self.gate.wait(60)
            raise RuntimeError("released after the time limit")
        return self.real.analyze(volume)


def test_a_hung_analyzer_times_out_and_the_next_job_runs(orthanc, volume, tmp_path):
    """The limit is well above a normal job (~3-9 s here) so that only the hung one times out."""
    rig = Rig(orthanc, tmp_path, job_timeout_seconds=20.0)
    gate = threading.Event()
    rig.worker.analyzers = [HangsOnce(a, gate) for a in build_analyzers(rig.settings)]
    rig.worker._exit_process = lambda code: (rig.exits.append(code), gate.set())  # os._exit in production
    hung = rig.send(volume_to_ct_series(volume, uid_seed="fault-hung"))
    assert rig.worker.run_once()
    assert rig.exits == [EXIT_TIMED_OUT]
    after = rig.ledger.get(hung.id)
    assert after.state == JobState.QUEUED and after.error_message == "timed out after 20 s"
    mr = ct_series(np.zeros((12, 16, 16), np.float32), modality="MR", description="T1 brain")
    for ds in mr:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    following = rig.send(mr)
    rig.drain()
    assert rig.ledger.get(following.id).state == JobState.SKIPPED  # the worker went on to the next job
    assert rig.results_once(hung).attempts == 2  # the timed-out job ran again, once


class FullDisk:
    """The ledger's engine, raising ENOSPC on every write while ``full`` is set."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine, self.full, self.refused = engine, False, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def begin(self) -> Any:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.engine.begin()


def test_ledger_disk_full_as_a_job_ends_then_freed_gives_results_once(rig, volume):
    job = rig.send(volume_to_ct_series(volume, uid_seed="fault-disk-full"))
    disk = FullDisk(rig.ledger.engine)
    rig.ledger.engine = disk  # type: ignore[assignment]

    record_success = rig.ledger.succeed

    def succeed_on_a_full_disk(*args: Any, **kwargs: Any) -> None:
        """The results are in the PACS; the disk fills up as the ledger records them, and is freed later."""
        rig.ledger.succeed = record_success  # type: ignore[method-assign]
        disk.full = True
        threading.Timer(rig.settings.lease_seconds, lambda: setattr(disk, "full", False)).start()
        record_success(*args, **kwargs)

    rig.ledger.succeed = succeed_on_a_full_disk  # type: ignore[method-assign]
    rig.drain()
    assert disk.refused >= rig.ledger.write_attempts
    done = rig.results_once(job)  # the lease expired, the job ran again and replaced its own series
    assert done.attempts == 2


# --- the sidecar process ---------------------------------------------------------------------
@pytest.mark.slow
def test_sidecar_killed_mid_job_loses_nothing(node):
    """SIGKILL of the whole sidecar (API, supervisor and workers) while a job runs; then it starts again."""
    datasets = volume_to_ct_series(thorax_phantom()[0], uid_seed="fault-sidecar-kill")  # ~10 s a job
    study_uid = str(datasets[0].StudyInstanceUID)
    node.upload(datasets)
    running = node.wait_job(study_uid, states=("running",), timeout=120)
    assert node.sidecar is not None
    os.killpg(node.sidecar.pid, signal.SIGKILL)
    node.sidecar.wait(10)
    node.start_sidecar()
    job = node.wait_job(study_uid, states=("succeeded",), timeout=180)
    assert job["id"] == running["id"] and job["attempts"] >= 2
    ours = [s for s in node.series(study_uid) if s.manufacturer == MANUFACTURER]
    assert len(ours) == OUTPUT_SERIES and all(s.n_instances == 1 for s in ours)
