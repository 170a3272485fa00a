"""A local PostgreSQL cluster of the node's own: for ``make up LEDGER=postgresql`` and for the tests.

Debian's ``postgresql`` server (``make setup`` installs it) started by hand with ``initdb`` +
``pg_ctl`` in a folder (``var/postgres`` for ``make up``, a temporary folder for the tests) on a
loopback port: no system service. The superuser ``postgres`` gets a generated password (kept in
``<root>/superuser.password``, mode 0600) and every TCP login needs its password
(``scram-sha-256``); the server listens on 127.0.0.1 unless told otherwise.

The server refuses to run as root, so under root its commands run as the ``postgres`` user, who
owns the cluster folder; the folders above it must then let that user pass (``x`` only, see
:func:`allow_traversal`). :meth:`PostgresCluster.ensure_database` creates a role and a database
it owns, each with a generated password, and returns the SQLAlchemy URL (psycopg 3 driver).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TypeVar

import psycopg
from psycopg import sql

from neuroradix.config import DeploySettings
from neuroradix.deploy.envfile import read_env_file, write_env_file
from neuroradix.deploy.orthanc import free_port
from neuroradix.errors import ConfigError

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"
C = TypeVar("C", bound="PostgresCluster")
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def postgres_bin_dir() -> Optional[Path]:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``, if any."""
    found = [
        p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists() and (p / "pg_ctl").exists()
    ]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def server_user() -> Optional[str]:
    """The user the server runs as: None (this one), or ``postgres`` when this process is root.

    Raises
    ------
    ConfigError
        Running as root and there is no ``postgres`` user.
    """
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ConfigError("running as root and there is no postgres user to run the PostgreSQL server as") from None
    return SUPERUSER


def allow_traversal(path: Path) -> None:
    """Let the ``postgres`` user pass through the folders above ``path`` that are this user's own.

    Only the search bit (``o+x``) is added: nobody else can list or read them, and every file
    below stays 0600 (``var/`` becomes 0701 under root).
    """
    path = Path(path).resolve()
    for folder in path.parents:
        try:
            st = folder.stat()
        except OSError:
            continue
        if st.st_uid == os.geteuid() and not st.st_mode & 0o001:
            os.chmod(folder, (st.st_mode & 0o7777) | 0o001)


class PostgresCluster:
    """One cluster in ``root`` (``data/``, ``server.log``, ``cluster.json``, ``superuser.password``).

    Parameters
    ----------
    root:
        The cluster's folder; created (0700) by :meth:`init`.
    port:
        TCP port; default: the one stored in ``cluster.json``, else a free one.
    listen:
        ``listen_addresses`` of the server (loopback by default; ``*`` for workers on other hosts).
    fast:
        Trade durability for speed (``fsync=off`` ...): throw-away test clusters only.
    """

    def __init__(
        self,
        root: Path,
        port: Optional[int] = None,
        *,
        listen: str = "127.0.0.1",
        fast: bool = False,
        bin_dir: Optional[Path] = None,
        run_as: Optional[str] = None,
    ) -> None:
        self.root = Path(root).resolve()
        found = bin_dir or postgres_bin_dir()
        if found is None:
            raise ConfigError(
                "the PostgreSQL server (Debian package postgresql) is not installed: make setup installs it"
            )
        self.bin_dir = found
        self.run_as = run_as if run_as is not None else server_user()
        stored = self._stored()
        self.port = int(port or stored.get("port") or free_port())
        self.listen = listen
        self.fast = fast

    # --- files ---------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def _stored(self) -> dict:
        path = self.root / "cluster.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _private(self, name: str, text: str) -> None:
        fd = os.open(self.root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        self._chown(self.root / name)

    def _chown(self, path: Path) -> None:
        if self.run_as:
            owner = pwd.getpwnam(self.run_as)
            os.chown(path, owner.pw_uid, owner.pw_gid)

    @property
    def superuser_password(self) -> str:
        return (self.root / "superuser.password").read_text().strip()

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    # --- server ----------------------------------------------------------------------------------
    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        if self.run_as and self.root.is_dir():  # ``var/`` may have been made 0700 again since
            allow_traversal(self.root)
        command = [*(["runuser", "-u", self.run_as, "--"] if self.run_as else []), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def init(self) -> None:
        """``initdb`` (UTF-8, scram-sha-256 on TCP) with a generated superuser password; no-op if done."""
        if self.initialized:
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._chown(self.root)
        if self.run_as:
            allow_traversal(self.root)
        self._private("superuser.password", secrets.token_urlsafe(24))
        init = self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(self.root / "superuser.password"),
            "--auth-local",
            "peer" if not self.fast else "trust",
            "--auth-host",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-instructions",
            *(["--no-sync"] if self.fast else []),
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
        if self.listen not in ("127.0.0.1", "localhost"):  # workers on other hosts log in with a password
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
        self._private("cluster.json", json.dumps({"port": self.port}))

    @property
    def running(self) -> bool:
        if not self.initialized:
            return False
        return self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status").returncode == 0

    def start(self, timeout: float = 60) -> PostgresCluster:
        """Initialise if needed and start the server; no-op when it runs already."""
        self.init()
        if self.running:
            return self
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.listen} -c max_connections=200"
        if self.fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        started = self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        if started.returncode != 0:
            server_log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()} {server_log[-2000:]}")
        logger.info("PostgreSQL started on 127.0.0.1:%d (%s)", self.port, self.root)
        return self

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server; False when it was not running."""
        if not self.running:
            return False
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")
        return True

    def remove(self) -> None:
        """Stop the server at once and delete the cluster folder (throw-away clusters)."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # --- databases -------------------------------------------------------------------------------
    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        """A superuser connection (autocommit) to ``dbname``."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self.superuser_password,
            dbname=dbname,
            autocommit=True,
        )

    def url(self, dbname: str, user: str = SUPERUSER, password: Optional[str] = None, host: str = "127.0.0.1") -> str:
        """The SQLAlchemy URL of ``dbname`` (psycopg 3 driver)."""
        secret = self.superuser_password if password is None else password
        return f"postgresql+psycopg://{user}:{secret}@{host}:{self.port}/{dbname}"

    def create_database(self, name: Optional[str] = None) -> str:
        """A new empty database owned by the superuser; returns its URL."""
        name = name or f"db_{secrets.token_hex(4)}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def ensure_database(self, name: str, role: str, password: Optional[str] = None) -> str:
        """Database ``name`` owned by login role ``role`` (created if missing); returns its URL.

        ``password``: the role's password (set each time, so a rotated one takes effect); a
        new one is generated when not given. Names are lower-case identifiers.
        """
        for value in (name, role):
            if not _NAME.fullmatch(value):
                raise ConfigError(f"not a plain PostgreSQL name: {value!r}")
        password = password or secrets.token_urlsafe(24)
        with self.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
        return self.url(name, role, password)


def throwaway_cluster(kind: type[C] = PostgresCluster) -> C:  # type: ignore[assignment]
    """A started cluster (of class ``kind``) in a new temporary folder, tuned for speed.

    :meth:`PostgresCluster.remove` deletes it.
    """
    root = Path(tempfile.mkdtemp(prefix="neuroradix-pg-"))
    cluster = kind(root, fast=True)
    try:
        cluster.start()
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


# --- the node's cluster (make up LEDGER=postgresql / ORTHANC_INDEX=postgresql) -------------------
LEDGER_DATABASE = "neuroradix_ledger"  # database and role of the job ledger
ORTHANC_DATABASE = "neuroradix_orthanc"  # database and role of Orthanc's index (and storage)
BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class NodeDatabases:
    """What ``make up`` runs on PostgreSQL: the ledger's URL and Orthanc's connection, when chosen."""

    cluster: Optional[PostgresCluster] = None
    ledger_url: Optional[str] = None  # None: the given NEURORADIX_LEDGER_URL, or SQLite under var/
    orthanc: Optional[dict] = None  # OrthancSpec.postgresql; None: Orthanc's own SQLite index


def node_cluster(var_dir: Path, settings: Optional[DeploySettings] = None) -> PostgresCluster:
    """The node's cluster in ``<var>/postgres`` (listening where ``NEURORADIX_POSTGRES_LISTEN`` says, default loopback)."""
    return PostgresCluster(Path(var_dir) / "postgres", listen=(settings or DeploySettings()).postgres_listen)


def _role_password(cluster: PostgresCluster, role: str) -> str:
    """The role's password, generated once and kept in ``<cluster>/roles.env`` (0600)."""
    path = cluster.root / "roles.env"
    stored = read_env_file(path)
    if role not in stored:
        stored[role] = secrets.token_urlsafe(24)
        write_env_file(path, stored, "passwords of the node's PostgreSQL roles (generated by 'make up')")
    return stored[role]


def start_node_databases(
    var_dir: Path, ledger: str = "", orthanc_index: str = "sqlite", settings: Optional[DeploySettings] = None
) -> NodeDatabases:
    """Start ``<var>/postgres`` when the ledger or Orthanc's index is to live there; their connections.

    ``ledger``: ``postgresql``, ``sqlite``, or ``""`` (PostgreSQL when the cluster exists from an
    earlier ``make up LEDGER=postgresql``, else SQLite). A ``NEURORADIX_LEDGER_URL`` in the
    environment always wins for the ledger. ``settings``: default, read from the environment.
    """
    settings = settings or DeploySettings()
    for name, value in (("LEDGER", ledger), ("ORTHANC_INDEX", orthanc_index)):
        if value not in ("", *BACKENDS):
            raise ConfigError(f"{name} must be one of {', '.join(BACKENDS)}, got {value!r}")
    cluster = node_cluster(var_dir, settings)
    given = settings.ledger_url
    ledger_on_pg = not given and (ledger == "postgresql" or (ledger == "" and cluster.initialized))
    if not ledger_on_pg and orthanc_index != "postgresql":
        return NodeDatabases()
    cluster.start()
    ledger_url = (
        cluster.ensure_database(LEDGER_DATABASE, LEDGER_DATABASE, _role_password(cluster, LEDGER_DATABASE))
        if ledger_on_pg
        else None
    )
    orthanc = None
    if orthanc_index == "postgresql":
        password = _role_password(cluster, ORTHANC_DATABASE)
        cluster.ensure_database(ORTHANC_DATABASE, ORTHANC_DATABASE, password)
        orthanc = {
            "host": "127.0.0.1",
            "port": cluster.port,
            "database": ORTHANC_DATABASE,
            "user": ORTHANC_DATABASE,
            "password": password,
            "storage": settings.orthanc_storage.lower() == "postgresql",
        }
    return NodeDatabases(cluster=cluster, ledger_url=ledger_url, orthanc=orthanc)


def stop_node_cluster(var_dir: Path) -> bool:
    """Stop ``<var>/postgres`` if it runs (its data stays); True when it was running."""
    if not (Path(var_dir) / "postgres" / "data" / "PG_VERSION").is_file():
        return False
    return node_cluster(var_dir).stop()
