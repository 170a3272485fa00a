"""Fixtures of the job tests: a throw-away PostgreSQL cluster, and a ledger on each engine.

The cluster is :mod:`neuroradix.deploy.postgres` (the one ``make up LEDGER=postgresql`` runs):
Debian's ``postgresql`` server (``make setup`` installs it) started by hand with ``initdb`` +
``pg_ctl`` in a temporary folder on a free loopback port (no system service; under root its
commands run as the ``postgres`` user), gone at the end of the session. Every test starts on an
empty database.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuroradix.deploy import postgres
from neuroradix.deploy.postgres import postgres_bin_dir
from neuroradix.errors import ConfigError
from neuroradix.jobs.ledger import Ledger
from tests.support import unavailable

__all__ = ["ENGINES", "PostgresCluster", "postgres_bin_dir", "start_postgres_cluster"]

ENGINES = ("sqlite", "postgresql")


class PostgresCluster(postgres.PostgresCluster):
    """A throw-away cluster: numbered databases, a shared emptied one; :meth:`stop` removes it."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - the base class's
        super().__init__(*args, **kwargs)
        self._names = itertools.count(1)
        self._shared: str | None = None

    def stop(self, mode: str = "immediate") -> bool:
        stopped = super().stop(mode)
        shutil.rmtree(self.root, ignore_errors=True)
        return stopped

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL (psycopg 3 driver)."""
        return super().create_database(name or f"ledger_{next(self._names)}")

    def emptied_database(self) -> str:
        """The shared test database, emptied (a new schema; earlier tests' connections closed); its URL.

        Cheaper than a database per test: each one is ~7 MB on disk, slow to create and to delete.
        """
        if self._shared is None:
            self._shared = self.create_database()
        name = self._shared.rsplit("/", 1)[1]
        with self.admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        with self.admin(name) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self._shared


def start_postgres_cluster() -> PostgresCluster:
    """Start a throw-away cluster, or skip (fail under ``CI``) naming what is missing."""
    if postgres_bin_dir() is None:
        unavailable("the PostgreSQL server (Debian package postgresql) is not installed: make setup installs it")
    try:
        return postgres.throwaway_cluster(PostgresCluster)
    except ConfigError as exc:  # root without a postgres user
        unavailable(str(exc))
        raise


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
