"""Run the node's Orthanc in the foreground with the package's ``orthanc.json``.

Which Orthanc: :mod:`neuroradix.deploy.orthanc_dist` (Orthanc 1.12.11+ from Debian sid, installed
by ``make setup``; the host's own with ``NEURORADIX_ORTHANC=host``). Once it answers, its version and
its plugins' are read from ``/system`` and ``/plugins``; one older than 1.12.11 is stopped and refused.

The packaged ``orthanc.json`` (``orthanc.json`` at the top of the repository, installed with the
plugin as the package ``neuroradix_plugin`` and found through ``importlib.resources``) holds no
secrets and paths for the Docker image; this module writes a runtime copy (mode 0600) with the local data directory, ports, the three accounts (people,
sidecar, viewer), the known senders and the absolute path of the packaged plugin, and starts
``Orthanc`` with it (umask 077, so its storage, index and log are the owner's only; no
``--verbose`` unless asked, because a verbose Orthanc logs every study UID). Used by ``make up``
and by the integration-test fixtures alike.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from neuroradix.config import DeploySettings
from neuroradix.deploy.orthanc_dist import OrthancDist, OrthancDistSettings, find_orthanc
from neuroradix.deploy.senders import Sender, orthanc_modalities
from neuroradix.errors import ConfigError
from neuroradix.pacs.orthanc_info import OrthancInfo, check_version, read_orthanc_info

logger = logging.getLogger(__name__)

ORTHANC_BINARY = "Orthanc"
PLUGIN_PACKAGE = "neuroradix_plugin"
"""The Orthanc plugin and ``orthanc.json``, installed as a package (``plugin/`` in the repository)."""
PLUGIN_SCRIPT = "glue.py"
"""The plugin's module that Orthanc loads (``PythonScript``); it imports the others beside it."""
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
SIDECAR_ACCOUNT = "neuroradix-sidecar"
VIEWER_ACCOUNT = "neuroradix-viewer"
SIDECAR_TOKEN_VARIABLES = frozenset(
    f"{prefix}SIDECAR_{kind}TOKEN" for prefix in ("", "NEURORADIX_") for kind in ("", "PLUGIN_", "READER_")
)
"""Environment variables that may hold a sidecar token; Orthanc starts with none of them but its own."""


def packaged_file(name: str) -> Path:
    """A file of the Orthanc plugin package ``neuroradix_plugin`` (``plugin/`` in the repository).

    ``orthanc.json`` or the plugin's modules (``glue.py`` is Orthanc's ``PythonScript``). Orthanc
    loads them by path, so the package must be installed as files (not zipped).
    """
    resource = importlib.resources.files(PLUGIN_PACKAGE).joinpath(name)
    if not isinstance(resource, Path) or not resource.is_file():
        raise ConfigError(f"packaged file {PLUGIN_PACKAGE}/{name} is missing or not on disk")
    return resource


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class OrthancSpec:
    """Everything that differs between one local Orthanc and another."""

    data_dir: Path
    http_port: int
    dicom_port: int
    user: str
    password: str
    sidecar_url: str
    sidecar_token: str  # the plugin's token: it may only queue a study (POST /v1/jobs)
    stable_age: int = 5
    aet: str = "NEURORADIX"
    sidecar_account: tuple[str, str] = (SIDECAR_ACCOUNT, "")  # (user, password); no password: not registered
    viewer_account: tuple[str, str] = (VIEWER_ACCOUNT, "")
    senders: tuple[Sender, ...] = ()
    verbose: bool = False
    base_config: Optional[Path] = None  # default: the packaged orthanc.json
    plugin_script: Optional[Path] = None  # default: the packaged plugin
    # Index (and optionally storage) in PostgreSQL (Debian's orthanc-postgresql plugin): host, port,
    # database, user, password, and "storage": True to keep the DICOM files there too. None: SQLite.
    postgresql: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def runtime_config(self, dist: Optional[OrthancDist] = None) -> dict:
        """The configuration Orthanc runs with; ``dist`` names the plugins to load (default: the host's folder)."""
        base = self.base_config or packaged_file("orthanc.json")
        plugin = self.plugin_script or packaged_file(PLUGIN_SCRIPT)
        config = json.loads(Path(base).read_text(encoding="utf-8"))
        storage = str((self.data_dir / "db").resolve())
        users = {self.user: self.password}
        users.update({name: password for name, password in (self.sidecar_account, self.viewer_account) if password})
        config.update(
            {
                "StorageDirectory": storage,
                "IndexDirectory": storage,
                "HttpPort": self.http_port,
                "DicomPort": self.dicom_port,
                "DicomAet": self.aet,
                "RegisteredUsers": users,
                "DicomModalities": orthanc_modalities(self.senders),
                "StableAge": int(self.stable_age),
                "PythonScript": str(Path(plugin).resolve()),
                "Plugins": dist.plugin_paths(postgresql=self.postgresql is not None) if dist else [str(PLUGIN_DIR)],
                # REST on loopback only (Orthanc 1.12.10+; older ones ignore it and keep RemoteAccessAllowed false)
                "HttpBindAddresses": ["127.0.0.1"],
            }
        )
        config["DicomWeb"] = {**config.get("DicomWeb", {}), "Host": f"127.0.0.1:{self.http_port}"}
        config["NeuroRadix"] = {
            **config.get("NeuroRadix", {}),
            "SidecarUrl": self.sidecar_url,
            "SidecarUser": self.sidecar_account[0],
            "ViewerUser": self.viewer_account[0],
        }
        if self.postgresql is not None:
            pg = self.postgresql
            config["PostgreSQL"] = {
                "EnableIndex": True,
                "EnableStorage": bool(pg.get("storage", False)),
                "Host": pg["host"],
                "Port": int(pg["port"]),
                "Database": pg["database"],
                "Username": pg["user"],
                "Password": pg["password"],
                "Lock": False,  # the node's own cluster; no second Orthanc shares the database
            }
        config.update(self.extra)
        return config


class OrthancProcess:
    """A local Orthanc started from an :class:`OrthancSpec`.

    Parameters
    ----------
    spec
        Ports, accounts, folders.
    dist
        Which Orthanc binary and plugins (:func:`~neuroradix.deploy.orthanc_dist.find_orthanc`);
        default: the one the environment names (the installed current Orthanc unless
        ``NEURORADIX_ORTHANC=host``). One older than 1.12.11 is refused unless ``allow_old``.
    allow_old
        Run an Orthanc older than 1.12.11 anyway (default: ``NEURORADIX_ALLOW_OLD_ORTHANC``).
    """

    def __init__(self, spec: OrthancSpec, dist: Optional[OrthancDist] = None, allow_old: Optional[bool] = None) -> None:
        settings = OrthancDistSettings.from_settings(DeploySettings())
        self.allow_old = settings.allow_old if allow_old is None else allow_old
        self.dist = dist or find_orthanc(replace(settings, allow_old=self.allow_old))
        self.spec = spec
        self.info: Optional[OrthancInfo] = None  # what the running Orthanc says (/system, /plugins)
        self.process: Optional[subprocess.Popen] = None
        self.config_path = spec.data_dir / "orthanc.runtime.json"
        self.log_path = spec.data_dir / "orthanc.log"

    def write_config(self) -> Path:
        self.spec.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.spec.data_dir, 0o700)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.spec.runtime_config(self.dist), fh, indent=2)
        return self.config_path

    def start(self, timeout: float = 60.0, detach: bool = False) -> OrthancProcess:
        self.write_config()
        # Orthanc gets the plugin's token only, never the admin or reader token of the calling process.
        env = {k: v for k, v in os.environ.items() if k not in SIDECAR_TOKEN_VARIABLES}
        env["NEURORADIX_SIDECAR_URL"] = self.spec.sidecar_url
        env["NEURORADIX_SIDECAR_PLUGIN_TOKEN"] = self.spec.sidecar_token
        env.update(self.dist.env)  # the sid Orthanc's Python home and DICOM dictionaries
        log = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        command = self.dist.command(*(["--verbose"] if self.spec.verbose else []), str(self.config_path))
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.spec.data_dir,
            start_new_session=detach,
            umask=0o077,  # storage, index and log: the owner's only
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def request(self, method: str, path: str, body: Optional[bytes] = None, timeout: float = 30.0) -> bytes:
        token = base64.b64encode(f"{self.spec.user}:{self.spec.password}".encode()).decode()
        req = urllib.request.Request(
            self.spec.url + path, data=body, method=method, headers={"Authorization": f"Basic {token}"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start (code {self.process.returncode}); see {self.log_path}")
            try:
                self.request("GET", "/system", timeout=2)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
                continue
            self._check_running_version()
            return
        raise TimeoutError(f"Orthanc did not answer within {timeout:.0f} s; see {self.log_path}")

    def _check_running_version(self) -> None:
        """Read the versions of the running Orthanc and its plugins; stop it and raise if it is too old."""
        self.info = read_orthanc_info(lambda path: json.loads(self.request("GET", path)))
        logger.info("%s", self.info.summary())
        try:
            check_version(self.info.version, self.allow_old)  # what runs, not only what was installed
        except ConfigError:
            self.stop()
            raise

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.request("POST", "/tools/shutdown", b"", timeout=5)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
