"""docker-compose.yml's scaled shape: PostgreSQL for the ledger and Orthanc's index, N GPU workers."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from neuroradix.config import Settings

REPO = Path(__file__).resolve().parents[2]


def _services() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def test_postgres_holds_the_ledger_and_orthancs_index():
    services = _services()
    postgres = services["postgres"]
    assert ":?" in postgres["environment"]["POSTGRES_PASSWORD"]  # no default password
    init = next(m for m in postgres["volumes"] if "docker-entrypoint-initdb.d" in m).split(":")[0]
    orthanc_db = services["orthanc"]["environment"]["ORTHANC__POSTGRESQL__DATABASE"]
    assert f"CREATE DATABASE {orthanc_db}" in (REPO / init).read_text()
    env = services["orthanc"]["environment"]
    assert env["ORTHANC__POSTGRESQL__ENABLE_INDEX"] == "true" and env["ORTHANC__POSTGRESQL__HOST"] == "postgres"
    assert orthanc_db != postgres["environment"]["POSTGRES_DB"]
    for name in ("orthanc", "sidecar", "worker"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    ledger = services["sidecar"]["environment"]["NEURORADIX_LEDGER_URL"]
    assert ledger == services["worker"]["environment"]["NEURORADIX_LEDGER_URL"]
    assert re.fullmatch(r"postgresql\+psycopg://neuroradix:\$\{POSTGRES_PASSWORD:\?[^}]*\}@postgres:5432/\w+", ledger)
    assert ledger.endswith("/" + postgres["environment"]["POSTGRES_DB"])


def test_gpu_workers_are_replicas_of_one_gpu_each_running_worker_processes_only():
    services = _services()
    worker = services["worker"]
    assert worker["command"][:2] == ["neuroradix", "worker"] and "--device" in worker["command"]
    assert re.fullmatch(r"\$\{\w+:-\d+\}|\d+", str(worker["deploy"]["replicas"]))
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = worker["environment"]
    fields = {f"NEURORADIX_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    assert "NEURORADIX_SIDECAR_TOKEN" not in env  # a worker serves no API: it never holds the admin token
    sidecar = services["sidecar"]["environment"]
    for key in ("NEURORADIX_UID_KEY", "NEURORADIX_ORTHANC_USER", "NEURORADIX_ORTHANC_URL", "NEURORADIX_VAR_DIR"):
        assert env[key] == sidecar[key], key  # same outputs UIDs, same PACS account, shared results
    assert worker["image"] == services["sidecar"]["image"]
