"""``make up`` / ``make down``: run the whole node (Orthanc + sidecar) in the background.

State lives under ``var/`` (mode 0700, every file 0600): ``secrets.env`` (generated once: the
three Orthanc accounts, the sidecar's admin, plugin and reader tokens and the key of the output
UIDs), ``node.env`` (what
scripts source to reach the node), ``senders.json`` (the known DICOM senders, see
:mod:`neuroradix.deploy.senders`), ``orthanc/`` (storage, runtime config, log), ``ledger.sqlite``,
``logs/`` and ``run/*.pid``. ``up`` returns once both answer and succeeds when the node is
already up; ``down`` stops what ``up`` started.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from neuroradix.config import DeploySettings
from neuroradix.deploy.envfile import read_env_file, worker_env_values, write_env_file
from neuroradix.deploy.orthanc import SIDECAR_ACCOUNT, VIEWER_ACCOUNT, OrthancProcess, OrthancSpec, free_port
from neuroradix.deploy.postgres import allow_traversal, start_node_databases, stop_node_cluster
from neuroradix.deploy.senders import Sender, ensure_local_sender, load_senders, senders_path

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"ORTHANC_HTTP_PORT": 8042, "DICOM_PORT": 4242, "SIDECAR_PORT": 8000}


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def tighten_permissions(var_dir: Path) -> None:
    """``var_dir`` and every folder in it 0700, every file 0600 (identifiers and secrets live there)."""
    var_dir = Path(var_dir)
    var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(var_dir, 0o700)
    for folder, dirs, files in os.walk(var_dir):
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def _private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _private_log(path: Path):
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


def spawn_sidecar(config: NodeConfig, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``neuroradix serve`` for ``config`` in its own session, logging to ``log_path`` (0600).

    Used by :func:`up` and by the test harness, so both run the sidecar the same way.
    """
    with _private_log(log_path) as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "neuroradix.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(config.sidecar_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=0o077,  # ledger, logs, pid files: the owner's only
        )


@dataclass(frozen=True)
class NodeConfig:
    """Ports, credentials and paths of one local node."""

    var_dir: Path
    orthanc_port: int
    dicom_port: int
    sidecar_port: int
    orthanc_user: str
    orthanc_password: str
    sidecar_token: str
    aet: str = "NEURORADIX"
    stable_age: int = 5
    sidecar_orthanc_password: str = ""  # the sidecar's Orthanc account (DICOMweb read + STOW)
    viewer_orthanc_password: str = ""  # the viewer proxy's Orthanc account (DICOMweb GET)
    uid_key: str = ""  # per-node secret of the output UIDs (neuroradix.uids.derive_uid)
    senders: tuple[Sender, ...] = ()
    calling_aet: str = ""  # the local sender's AE title (DICOM_CALLING_AET)
    orthanc_verbose: bool = False
    # Scoped sidecar tokens (neuroradix.api.deps): the plugin's may only queue a study, a reader's only GET.
    sidecar_plugin_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    sidecar_reader_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def orthanc_url(self) -> str:
        return f"http://127.0.0.1:{self.orthanc_port}"

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"

    def node_env(self) -> dict[str, str]:
        return {
            "ORTHANC_URL": self.orthanc_url,
            "ORTHANC_USER": self.orthanc_user,
            "ORTHANC_PASSWORD": self.orthanc_password,
            "DICOM_HOST": "127.0.0.1",
            "DICOM_PORT": str(self.dicom_port),
            "DICOM_AET": self.aet,
            "DICOM_CALLING_AET": self.calling_aet,
            "SIDECAR_URL": self.sidecar_url,
            "SIDECAR_TOKEN": self.sidecar_token,
            "SIDECAR_READER_TOKEN": self.sidecar_reader_token,
            "METRICS_URL": self.sidecar_url + "/metrics",  # GET with SIDECAR_READER_TOKEN or SIDECAR_TOKEN
            "VIEWER_ORTHANC_USER": VIEWER_ACCOUNT if self.viewer_orthanc_password else "",
            "VIEWER_ORTHANC_PASSWORD": self.viewer_orthanc_password,
        }

    def orthanc_spec(self) -> OrthancSpec:
        return OrthancSpec(
            data_dir=self.var_dir / "orthanc",
            http_port=self.orthanc_port,
            dicom_port=self.dicom_port,
            user=self.orthanc_user,
            password=self.orthanc_password,
            sidecar_url=self.sidecar_url,
            sidecar_token=self.sidecar_plugin_token,  # the plugin may only queue studies
            stable_age=self.stable_age,
            aet=self.aet,
            sidecar_account=(SIDECAR_ACCOUNT, self.sidecar_orthanc_password),
            viewer_account=(VIEWER_ACCOUNT, self.viewer_orthanc_password),
            senders=self.senders,
            verbose=self.orthanc_verbose,
        )


def load_or_create_config(var_dir: Path, settings: Optional[DeploySettings] = None) -> NodeConfig:
    """Credentials are generated on first start and kept; ports default to 8042/4242/8000 when free.

    A ``secrets.env`` from an older version gets the secrets it lacks (the sidecar's and the
    viewer's Orthanc accounts, the UID key) added; nothing it holds is changed. ``settings``:
    the ports, the stable age, Orthanc's verbosity (default: read from the environment).
    """
    settings = settings or DeploySettings()
    secrets_path = var_dir / "secrets.env"
    stored = read_env_file(secrets_path)
    generated = {
        "ORTHANC_USER": lambda: "neuroradix",
        "ORTHANC_PASSWORD": lambda: secrets.token_urlsafe(24),
        "SIDECAR_TOKEN": lambda: secrets.token_urlsafe(32),
        "SIDECAR_PLUGIN_TOKEN": lambda: secrets.token_urlsafe(32),
        "SIDECAR_READER_TOKEN": lambda: secrets.token_urlsafe(32),
        "ORTHANC_SIDECAR_PASSWORD": lambda: secrets.token_urlsafe(24),
        "ORTHANC_VIEWER_PASSWORD": lambda: secrets.token_urlsafe(24),
        "UID_KEY": lambda: secrets.token_hex(32),
    }
    missing = [key for key in (*generated, *DEFAULT_PORTS) if key not in stored]
    for key in missing:
        if key in generated:
            stored[key] = generated[key]()
        else:
            port = int(getattr(settings, key.lower()))
            stored[key] = str(port if port and _port_free(port) else free_port())
    if missing:
        write_env_file(secrets_path, stored, "generated by 'make up'; keep private (docs/security.md: rotation)")
    return NodeConfig(
        var_dir=var_dir,
        orthanc_port=int(stored["ORTHANC_HTTP_PORT"]),
        dicom_port=int(stored["DICOM_PORT"]),
        sidecar_port=int(stored["SIDECAR_PORT"]),
        orthanc_user=stored["ORTHANC_USER"],
        orthanc_password=stored["ORTHANC_PASSWORD"],
        sidecar_token=stored["SIDECAR_TOKEN"],
        sidecar_plugin_token=stored["SIDECAR_PLUGIN_TOKEN"],
        sidecar_reader_token=stored["SIDECAR_READER_TOKEN"],
        stable_age=settings.stable_age,
        sidecar_orthanc_password=stored["ORTHANC_SIDECAR_PASSWORD"],
        viewer_orthanc_password=stored["ORTHANC_VIEWER_PASSWORD"],
        uid_key=stored["UID_KEY"],
        senders=tuple(load_senders(senders_path(var_dir))),
        orthanc_verbose=settings.orthanc_verbose,
    )


def _pid_alive(pid_file: Path) -> Optional[int]:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def wait_ready(url: str, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _get(url) == 200:
            return
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f} s; see {log}")


def sidecar_environment(config: NodeConfig) -> dict[str, str]:
    """The sidecar's (and its workers') environment: it logs in to Orthanc with its own account
    (when the node has one) and derives output UIDs with the node's key."""
    env = {**os.environ}
    env.update(
        {
            f"NEURORADIX_{k}": v
            for k, v in config.node_env().items()
            if not k.startswith("VIEWER_") and k != "DICOM_CALLING_AET"
        }
    )
    if config.sidecar_orthanc_password:
        env["NEURORADIX_ORTHANC_USER"] = SIDECAR_ACCOUNT
        env["NEURORADIX_ORTHANC_PASSWORD"] = config.sidecar_orthanc_password
    if config.uid_key:
        env["NEURORADIX_UID_KEY"] = config.uid_key
    env["NEURORADIX_SIDECAR_PLUGIN_TOKEN"] = config.sidecar_plugin_token
    env["NEURORADIX_VAR_DIR"] = str(config.var_dir.resolve())
    return env


def up(var_dir: Path, timeout: float = 120.0, ledger: str = "", orthanc_index: str = "sqlite") -> NodeConfig:
    """Start Orthanc and the sidecar in the background (no-op if they already run).

    ``ledger`` / ``orthanc_index``: ``postgresql`` runs them on a local cluster in ``var/postgres``
    (:mod:`neuroradix.deploy.postgres`); a ``NEURORADIX_LEDGER_URL`` in the environment wins.
    """
    var_dir = var_dir.resolve()
    tighten_permissions(var_dir)
    local = ensure_local_sender(senders_path(var_dir))
    settings = DeploySettings()
    config = dataclasses.replace(load_or_create_config(var_dir, settings), calling_aet=local.aet)
    run, logs = var_dir / "run", var_dir / "logs"
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    databases = start_node_databases(var_dir, ledger, orthanc_index, settings)
    orthanc = OrthancProcess(dataclasses.replace(config.orthanc_spec(), postgresql=databases.orthanc))
    if _pid_alive(run / "orthanc.pid") is None:
        orthanc.start(timeout=60, detach=True)
        assert orthanc.process is not None
        _private_file(run / "orthanc.pid", str(orthanc.process.pid))
        logger.info("Orthanc started on %s (DICOM port %d)", config.orthanc_url, config.dicom_port)
    else:
        orthanc.wait_ready(30)
    if orthanc.info is not None:  # read from /system and /plugins of the running Orthanc
        logger.info("running %s [%s]", orthanc.info.summary(), orthanc.dist.source.value)
    env = sidecar_environment(config)
    if databases.ledger_url:
        env["NEURORADIX_LEDGER_URL"] = databases.ledger_url
    ledger_url = env.get("NEURORADIX_LEDGER_URL") or f"sqlite:///{var_dir / 'ledger.sqlite'}"
    if _pid_alive(run / "sidecar.pid") is None:
        process = spawn_sidecar(config, env, logs / "sidecar.log")
        _private_file(run / "sidecar.pid", str(process.pid))
    wait_ready(config.sidecar_url + "/readyz", timeout, "the sidecar", logs / "sidecar.log")
    write_env_file(var_dir / "node.env", config.node_env(), "written by 'make up': source it to reach the node")
    write_env_file(
        var_dir / "worker.env",
        worker_env_values(env, ledger_url),
        "written by 'make up': neuroradix worker --env-file var/worker.env joins this node (docs/scale-out.md)",
    )
    tighten_permissions(var_dir)
    if databases.cluster is not None and databases.cluster.run_as:
        allow_traversal(databases.cluster.root)  # the postgres user must reach var/postgres (var/ 0701)
    return config


def down(var_dir: Path, timeout: float = 30.0) -> list[str]:
    """Stop what :func:`up` started; returns what was stopped."""
    var_dir = var_dir.resolve()
    stopped = []
    run = var_dir / "run"
    pid = _pid_alive(run / "sidecar.pid")
    if pid is not None:
        os.killpg(pid, signal.SIGTERM)
        _wait_gone(pid, timeout)
        stopped.append("sidecar")
    (run / "sidecar.pid").unlink(missing_ok=True)
    pid = _pid_alive(run / "orthanc.pid")
    if pid is not None:
        config = load_or_create_config(var_dir)
        orthanc = OrthancProcess(config.orthanc_spec())
        try:
            orthanc.request("POST", "/tools/shutdown", b"", timeout=5)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, timeout)
        stopped.append("orthanc")
    (run / "orthanc.pid").unlink(missing_ok=True)
    if stop_node_cluster(var_dir):
        stopped.append("postgresql")
    return stopped


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def status(var_dir: Path) -> dict:
    var_dir = var_dir.resolve()
    env = read_env_file(var_dir / "node.env")
    return {
        "orthanc_pid": _pid_alive(var_dir / "run" / "orthanc.pid"),
        "sidecar_pid": _pid_alive(var_dir / "run" / "sidecar.pid"),
        "sidecar_ready": _get(env["SIDECAR_URL"] + "/readyz") == 200 if env else False,
        "node_env": str(var_dir / "node.env") if env else None,
    }


def dump_status(var_dir: Path) -> str:
    return json.dumps(status(var_dir), indent=2)
