"""A throw-away node in a temporary directory (Orthanc + sidecar on free ports) for tests and benchmarks."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

import pydicom

from neuroradix.config import DeploySettings
from neuroradix.deploy.launcher import NodeConfig, sidecar_environment, spawn_sidecar, tighten_permissions
from neuroradix.deploy.orthanc import OrthancProcess, free_port
from neuroradix.deploy.orthanc_dist import OrthancDist, OrthancDistSettings, find_orthanc
from neuroradix.deploy.senders import Sender, add_sender, ensure_local_sender, load_senders, senders_path
from neuroradix.errors import ConfigError
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pacs.summaries import SeriesSummary
from tests.support import unavailable

TERMINAL = ("succeeded", "failed", "skipped")


def require_orthanc() -> OrthancDist:
    """The Orthanc the node runs (1.12.11+ installed by ``make setup``, or the host's with
    ``NEURORADIX_ORTHANC=host``), or skip/fail naming why not."""
    try:
        return find_orthanc(OrthancDistSettings.from_settings(DeploySettings()))
    except ConfigError as exc:
        unavailable(f"no Orthanc to run: {exc}")
        raise  # unreachable: unavailable() raises


class EphemeralNode:
    """Orthanc + sidecar with short leases and a fast reconciler; everything lives under ``root``."""

    def __init__(
        self,
        root: Path,
        stable_age: int = 2,
        lease_seconds: float = 8.0,
        reconcile_seconds: float = 3.0,
        plugin_reaches_sidecar: bool = True,
        extra_env: Optional[dict] = None,
        senders: Sequence[Sender] = (),
    ) -> None:
        self.root = root
        tighten_permissions(root)
        for sender in senders:  # besides the local one, e.g. a known AE title on another host
            add_sender(senders_path(root), sender)
        local = ensure_local_sender(senders_path(root))
        self.config = NodeConfig(
            var_dir=root,
            orthanc_port=free_port(),
            dicom_port=free_port(),
            sidecar_port=free_port(),
            orthanc_user="test",
            orthanc_password="test-password-" + os.urandom(6).hex(),
            sidecar_token="test-token-" + os.urandom(12).hex(),
            stable_age=stable_age,
            sidecar_orthanc_password="sidecar-" + os.urandom(9).hex(),
            viewer_orthanc_password="viewer-" + os.urandom(9).hex(),
            uid_key=os.urandom(32).hex(),
            senders=tuple(load_senders(senders_path(root))),
            calling_aet=local.aet,
        )
        self.env = sidecar_environment(self.config)
        self.env.update(
            {
                "NEURORADIX_LEASE_SECONDS": str(lease_seconds),
                "NEURORADIX_POLL_SECONDS": "0.2",
                "NEURORADIX_RETRY_BASE_SECONDS": "1",
                "NEURORADIX_RECONCILE_INTERVAL_SECONDS": str(reconcile_seconds),
                "NEURORADIX_RECONCILE_SETTLE_SECONDS": "4",
                **(extra_env or {}),
            }
        )
        spec = self.config.orthanc_spec()
        if not plugin_reaches_sidecar:  # only the reconciler can bring studies to the sidecar
            spec = dataclasses.replace(spec, sidecar_url=f"http://127.0.0.1:{free_port()}")
        self.orthanc = OrthancProcess(spec)
        self.sidecar: Optional[subprocess.Popen] = None
        self.pacs = PacsClient(
            self.config.orthanc_url + "/dicom-web", self.config.orthanc_user, self.config.orthanc_password
        )

    # --- processes ---------------------------------------------------------------------------
    def start(self) -> EphemeralNode:
        """Start Orthanc and the sidecar; on failure stop whatever did start, then raise."""
        try:
            self.orthanc.start(timeout=60)
            self.start_sidecar()
        except BaseException:
            self.stop()
            raise
        return self

    def start_sidecar(self) -> None:
        self.sidecar = spawn_sidecar(self.config, self.env, self.root / "sidecar.log")
        deadline = time.monotonic() + 180  # a loaded 2-core machine imports torch slowly
        while time.monotonic() < deadline:
            if self.sidecar.poll() is not None:
                raise RuntimeError("sidecar exited at start:\n" + self.log_tail())
            try:
                self.api("GET", "/healthz")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise TimeoutError("sidecar did not start:\n" + self.log_tail())

    def stop_sidecar(self) -> None:
        if self.sidecar is not None and self.sidecar.poll() is None:
            os.killpg(self.sidecar.pid, signal.SIGTERM)
            try:
                self.sidecar.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.sidecar.pid, signal.SIGKILL)
                self.sidecar.wait()

    def stop(self) -> None:
        self.stop_sidecar()
        self.orthanc.stop()

    def worker_pid(self) -> int:
        return int((self.root / "run" / "worker-0.pid").read_text())

    def log_tail(self, n: int = 60) -> str:
        path = self.root / "sidecar.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    # --- I/O -----------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Optional[dict] = None, raw: bool = False):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.config.sidecar_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.config.sidecar_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            content = response.read()
        return content if raw else json.loads(content)

    def upload(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Store instances through Orthanc's REST API (like a C-STORE, without dcmtk)."""

        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            self.orthanc.request("POST", "/instances", buffer.getvalue())

    def storescu(
        self, files: Sequence[Path], aet: Optional[str] = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        """C-STORE ``files`` as the node's local sender (``DICOM_CALLING_AET``) or as ``aet``."""
        if shutil.which("storescu") is None:
            raise RuntimeError("dcmtk's storescu is not installed")
        return subprocess.run(
            [
                "storescu",
                "-aet",
                aet or self.config.calling_aet,
                "-aec",
                self.config.aet,
                "127.0.0.1",
                str(self.config.dicom_port),
                *map(str, files),
            ],
            check=check,
            capture_output=True,
            text=True,
        )

    def accounts(self) -> dict[str, tuple[str, str]]:
        """Orthanc's accounts by role: ``people``, ``sidecar``, ``viewer`` -> (user, password)."""
        spec = self.orthanc.spec
        return {"people": (spec.user, spec.password), "sidecar": spec.sidecar_account, "viewer": spec.viewer_account}

    def jobs(self, study_uid: str) -> list[dict]:
        return self.api("GET", f"/v1/jobs?study_uid={study_uid}")

    def wait_job(self, study_uid: str, timeout: float = 180.0, states: Sequence[str] = TERMINAL) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs(study_uid)
            if jobs and jobs[0]["state"] in states:
                return jobs[0]
            time.sleep(0.2)
        raise TimeoutError(f"no job reached {states} in {timeout} s; jobs={self.jobs(study_uid)}\n{self.log_tail()}")

    def series(self, study_uid: str) -> list[SeriesSummary]:
        return self.pacs.search_series(study_uid)
