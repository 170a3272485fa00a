"""Orthanc with its index in PostgreSQL (Debian's orthanc-postgresql), the ledger there too: the main path.

Store a study → the worker's results land in the PACS → QIDO finds them; and the study really
lives in PostgreSQL (Orthanc's tables in its own database), not in a SQLite index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from neuroradix.deploy.orthanc import OrthancProcess
from neuroradix.deploy.postgres import LEDGER_DATABASE, ORTHANC_DATABASE
from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.samples.phantom import thorax_phantom
from tests.harness import EphemeralNode, require_orthanc
from tests.jobs.conftest import PostgresCluster, start_postgres_cluster
from tests.support import unavailable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    started = start_postgres_cluster()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def pg_node(cluster: PostgresCluster, tmp_path_factory) -> Iterator[EphemeralNode]:
    if not Path(require_orthanc().plugin_paths(postgresql=True)[-1]).exists():
        unavailable("Orthanc's PostgreSQL plugin is not installed (Debian package orthanc-postgresql; make setup)")
    ledger_url = cluster.ensure_database(LEDGER_DATABASE, LEDGER_DATABASE, "ledger-pw-0123456789")
    orthanc_password = "orthanc-pw-0123456789"
    cluster.ensure_database(ORTHANC_DATABASE, ORTHANC_DATABASE, orthanc_password)
    node = EphemeralNode(
        Path(tmp_path_factory.mktemp("pg-node")),
        reconcile_seconds=3600,
        extra_env={"NEURORADIX_LEDGER_URL": ledger_url},
    )
    postgresql = {
        "host": "127.0.0.1",
        "port": cluster.port,
        "database": ORTHANC_DATABASE,
        "user": ORTHANC_DATABASE,
        "password": orthanc_password,
    }
    node.orthanc = OrthancProcess(dataclasses.replace(node.orthanc.spec, postgresql=postgresql))
    node.start()
    yield node
    node.stop()


def test_orthanc_on_postgresql_stores_results_and_answers_qido(pg_node: EphemeralNode, cluster: PostgresCluster):
    config = pg_node.orthanc.spec.runtime_config()
    assert config["PostgreSQL"]["EnableIndex"] is True and config["PostgreSQL"]["EnableStorage"] is False
    volume, _ = thorax_phantom(shape=(24, 64, 64), spacing=(5.0, 4.0, 4.0))
    datasets = volume_to_ct_series(volume, uid_seed="it-pg-orthanc")
    study_uid = str(datasets[0].StudyInstanceUID)
    pg_node.upload(datasets)
    job = pg_node.wait_job(study_uid, timeout=240)
    assert job["state"] == "succeeded", job
    outputs = [s for s in pg_node.series(study_uid) if s.manufacturer == "Neuro Radix"]
    assert len(outputs) == 4, outputs
    assert sum(s.n_instances or 0 for s in outputs) == len(job["output_uids"])
    qido = requests.get(
        f"{pg_node.config.orthanc_url}/dicom-web/studies",
        params={"StudyInstanceUID": study_uid},
        auth=(pg_node.config.orthanc_user, pg_node.config.orthanc_password),
        timeout=30,
    )
    qido.raise_for_status()
    assert [s["0020000D"]["Value"][0] for s in qido.json()] == [study_uid]
    # The index is PostgreSQL's: Orthanc's tables hold the study and its series (CT + 4 results).
    with cluster.admin(ORTHANC_DATABASE) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"resources", "maindicomtags"} <= tables, tables
        counts: dict[int, int] = dict(
            conn.execute("SELECT resourcetype, count(*) FROM resources GROUP BY resourcetype").fetchall()
        )
    assert counts.get(1) == 1 and counts.get(2) == 5, counts  # one study; its CT series and 4 result series
    assert not list((pg_node.root / "orthanc" / "db").glob("index*")), "Orthanc kept a SQLite index"
    # and the ledger too: the job row lives in the PostgreSQL ledger database
    with cluster.admin(LEDGER_DATABASE) as conn:
        assert conn.execute("SELECT state FROM jobs WHERE id = %s", (job["id"],)).fetchall() == [("succeeded",)]


def test_study_labels_live_in_the_postgresql_index(pg_node: EphemeralNode, cluster: PostgresCluster):
    """Labels (Orthanc 1.12+) with the PostgreSQL index: put by the sidecar, found with /tools/find."""
    volume, _ = thorax_phantom(shape=(16, 32, 32), spacing=(5.0, 4.0, 4.0))
    datasets = volume_to_ct_series(volume, uid_seed="it-pg-labels")
    pg_node.upload(datasets)
    orthanc, people = pg_node.config.orthanc_url, pg_node.accounts()["people"]
    found = requests.post(f"{orthanc}/tools/lookup", data=str(datasets[0].StudyInstanceUID), auth=people, timeout=30)
    study_id = [item["ID"] for item in found.json() if item["Type"] == "Study"][0]
    sidecar = pg_node.accounts()["sidecar"]
    labelled = requests.put(f"{orthanc}/studies/{study_id}/labels/ai-priority", data=b"", auth=sidecar, timeout=30)
    assert labelled.status_code == 200
    query = {"Level": "Study", "Labels": ["ai-priority"], "Query": {}}
    assert requests.post(f"{orthanc}/tools/find", json=query, auth=sidecar, timeout=30).json() == [study_id]
    with cluster.admin(ORTHANC_DATABASE) as conn:
        assert ("ai-priority",) in conn.execute("SELECT label FROM labels").fetchall()
