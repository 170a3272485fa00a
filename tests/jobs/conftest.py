"""Fixtures of the job tests: a throw-away PostgreSQL cluster, and a ledger on each engine.

The cluster is Debian's ``postgresql`` server (``make setup`` installs it) started by hand with
``initdb`` + ``pg_ctl`` in a temporary folder on a free loopback port: no system service, no
password (``trust`` on 127.0.0.1 only), gone at the end of the session. The server refuses to
run as root, so under root its commands run as the ``postgres`` user, who owns the folder.
Every test starts on an empty database.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import psycopg
import pytest

from neuroradix.jobs.ledger import Ledger
from tests.support import unavailable

ENGINES = ("sqlite", "postgresql")


def postgres_bin_dir() -> Optional[Path]:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``, if any."""
    found = [
        p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists() and (p / "pg_ctl").exists()
    ]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """A PostgreSQL cluster of its own in ``root`` on ``127.0.0.1:port``; :meth:`stop` removes it."""

    def __init__(self, bin_dir: Path, root: Path, port: int, run_as: Optional[str]) -> None:
        self.bin_dir, self.root, self.port, self.run_as = bin_dir, root, port, run_as
        self._names = itertools.count(1)
        self._shared: Optional[str] = None

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [*(["runuser", "-u", self.run_as, "--"] if self.run_as else []), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    def start(self) -> None:
        data, log = self.root / "data", self.root / "server.log"
        init = self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        started = self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "30", "start"
        )
        if started.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()} {server_log[-2000:]}")

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL (psycopg 3 driver)."""
        name = f"ledger_{next(self._names)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def emptied_database(self) -> str:
        """The shared test database, emptied (a new schema; earlier tests' connections closed); its URL.

        Cheaper than a database per test: each one is ~7 MB on disk, slow to create and to delete.
        """
        if self._shared is None:
            self._shared = self.create_database()
        name = self._shared.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        with self._admin(name) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self._shared


def start_postgres_cluster() -> PostgresCluster:
    """Start a throw-away cluster, or skip (fail under ``CI``) naming what is missing."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable("the PostgreSQL server (Debian package postgresql) is not installed: make setup installs it")
    run_as: Optional[str] = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no postgres user to run the PostgreSQL server as")
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="neuroradix-pg-"))
    if run_as:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = PostgresCluster(bin_dir, root, _free_port(), run_as)
    try:
        cluster.start()
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the session (see :meth:`PostgresCluster.emptied_database`)."""
    cluster = start_postgres_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(params=ENGINES)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return request.getfixturevalue("postgres_cluster").emptied_database()


@pytest.fixture()
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A ledger on each engine; its connections are closed afterwards."""
    opened = Ledger(ledger_url)
    yield opened
    opened.engine.dispose()
