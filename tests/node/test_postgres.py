"""The node's own PostgreSQL cluster (``make up LEDGER=postgresql``): under var/, private, durable, passworded."""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from neuroradix.deploy.launcher import tighten_permissions
from neuroradix.deploy.postgres import (
    ORTHANC_DATABASE,
    node_cluster,
    postgres_bin_dir,
    start_node_databases,
    stop_node_cluster,
)
from neuroradix.errors import ConfigError
from neuroradix.jobs.ledger import Ledger
from tests.support import unavailable

pytestmark = pytest.mark.slow


@pytest.fixture()
def var_dir() -> Iterator[Path]:
    if postgres_bin_dir() is None:
        unavailable("the PostgreSQL server (Debian package postgresql) is not installed: make setup installs it")
    folder = Path(tempfile.mkdtemp(prefix="neuroradix-var-"))
    tighten_permissions(folder)
    yield folder
    try:
        node_cluster(folder).remove()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ledger_and_orthanc_databases_in_var_postgres_survive_a_restart(var_dir: Path, monkeypatch):
    monkeypatch.delenv("NEURORADIX_LEDGER_URL", raising=False)
    databases = start_node_databases(var_dir, ledger="postgresql", orthanc_index="postgresql")
    assert databases.cluster is not None and databases.ledger_url and databases.orthanc
    root = var_dir / "postgres"
    assert databases.cluster.root == root.resolve()
    assert _mode(root) == 0o700 and _mode(root / "roles.env") == 0o600 and _mode(root / "superuser.password") == 0o600
    assert databases.ledger_url.startswith("postgresql+psycopg://neuroradix_ledger:")
    ledger = Ledger(databases.ledger_url)
    job, _ = ledger.enqueue("1.2.3.4", "pv")
    ledger.engine.dispose()
    pg = databases.orthanc
    assert pg["database"] == ORTHANC_DATABASE and pg["port"] == databases.cluster.port
    psycopg.connect(
        host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"], dbname=pg["database"]
    ).close()
    with pytest.raises(psycopg.OperationalError):  # TCP logins need the password
        psycopg.connect(host="127.0.0.1", port=pg["port"], user=pg["user"], password="wrong", dbname=pg["database"])

    tighten_permissions(var_dir)  # what `make up` does at its end: var/ 0700 again
    assert stop_node_cluster(var_dir) is True
    assert not node_cluster(var_dir).running
    assert stop_node_cluster(var_dir) is False

    again = start_node_databases(var_dir)  # LEDGER unset: the existing cluster keeps the ledger
    assert again.ledger_url == databases.ledger_url and again.orthanc is None
    ledger = Ledger(again.ledger_url)
    assert ledger.get(job.id) is not None  # the job survived the restart
    ledger.engine.dispose()


def test_a_given_ledger_url_wins_and_sqlite_starts_nothing(var_dir: Path, monkeypatch):
    monkeypatch.setenv("NEURORADIX_LEDGER_URL", "postgresql+psycopg://u:p@db.example:5432/ledger")
    assert start_node_databases(var_dir, ledger="postgresql").cluster is None
    monkeypatch.delenv("NEURORADIX_LEDGER_URL")
    assert start_node_databases(var_dir, ledger="sqlite").cluster is None
    assert start_node_databases(var_dir).cluster is None
    assert not (var_dir / "postgres").exists()
    with pytest.raises(ConfigError, match="LEDGER"):
        start_node_databases(var_dir, ledger="mysql")
