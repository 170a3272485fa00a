"""Metrics of the job machinery, the /metrics route, JSON logs and the worker command's checks."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest

from neuroradix import cli
from neuroradix.api.app import create_app
from neuroradix.config import Settings
from neuroradix.deploy.envfile import worker_env_values
from neuroradix.errors import ConfigError
from neuroradix.jobs import metrics
from neuroradix.jobs.ledger import JobState, Ledger
from neuroradix.jobs.metrics import JOB_ID, STUDY, JsonFormatter, LedgerCollector, MeteredLedger, metric_names
from neuroradix.jobs.worker import make_worker_id
from neuroradix.runtime.worker_host import check_ledger_for_worker
from neuroradix.uids import short_hash

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-neuroradix.json"
VERSION = "pv-test"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_ledger_collector_reports_states_depth_and_oldest_age(ledger: Ledger):
    first, _ = ledger.enqueue("1.2.3.1", VERSION)
    ledger.enqueue("1.2.3.2", VERSION)
    ledger.enqueue("1.2.3.3", VERSION)
    claimed = ledger.claim("w", 60)
    assert claimed is not None and claimed.id == first.id
    time.sleep(0.3)
    families = {family.name: family for family in LedgerCollector(ledger).collect()}
    states = {s.labels["state"]: s.value for s in families["neuroradix_jobs"].samples}
    assert states == {"queued": 2, "running": 1, "succeeded": 0, "failed": 0, "skipped": 0}
    assert families["neuroradix_queue_depth"].samples[0].value == 2
    age = families["neuroradix_oldest_queued_age_seconds"].samples[0].value
    assert 0.3 <= age < 60
    assert families["neuroradix_ledger_up"].samples[0].value == 1


def test_ledger_collector_says_when_the_ledger_is_down(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    ledger.engine.dispose()
    (tmp_path / "l.sqlite").unlink()
    (tmp_path / "l.sqlite").mkdir()  # a folder where the file was: every query fails
    families = {family.name: family for family in LedgerCollector(ledger).collect()}
    assert list(families) == ["neuroradix_ledger_up"]
    assert families["neuroradix_ledger_up"].samples[0].value == 0


def test_metered_ledger_counts_outcomes_stages_analyzers_retries_and_takeovers(ledger_url: str):
    ledger = MeteredLedger(ledger_url)
    try:
        for n in range(4):
            ledger.enqueue(f"1.2.9.{n}", VERSION, max_attempts=5)
        before = {
            "ok": value("neuroradix_jobs_finished_total", outcome="succeeded"),
            "failed": value("neuroradix_job_failures_total", error_class="BadInputError"),
            "skipped": value("neuroradix_jobs_finished_total", outcome="skipped"),
            "retry": value("neuroradix_job_retries_total", error_class="KeyError"),
            "takeover": value("neuroradix_lease_takeovers_total"),
            "decode": value("neuroradix_stage_duration_seconds_count", stage="decode"),
            "lung": value("neuroradix_studies_processed_total", analyzer="lung-hu", status="ok"),
        }
        job = ledger.claim("w1", 60)
        assert job is not None
        assert JOB_ID.get() == job.id and STUDY.get() == short_hash(job.study_uid)
        assert value("neuroradix_worker_last_seen_timestamp_seconds", worker="w1") > time.time() - 60
        ledger.succeed(
            job.id,
            "w1",
            input_series_uid=None,
            output_uids=[],
            timings={"decode": 0.4, "total": 1.0},
            details={"analyzers": {"lung-hu": "ok"}},
        )
        job = ledger.claim("w1", 60)
        assert job is not None
        ledger.fail(job.id, "w1", "BadInputError", "missing slices")
        job = ledger.claim("w1", 60)
        assert job is not None
        ledger.fail(job.id, "w1", "NotEligibleError", "MR only", skipped=True)
        job = ledger.claim("w1", 60)
        assert job is not None
        assert ledger.retry_later(job.id, "w1", "KeyError", "internal error", 0) == JobState.QUEUED
        job = ledger.claim("w1", 0.2)  # a worker that dies: its lease runs out
        assert job is not None
        time.sleep(0.4)
        again = ledger.claim("w2", 60)
        assert again is not None and again.id == job.id

        assert value("neuroradix_jobs_finished_total", outcome="succeeded") == before["ok"] + 1
        assert value("neuroradix_job_failures_total", error_class="BadInputError") == before["failed"] + 1
        assert value("neuroradix_jobs_finished_total", outcome="skipped") == before["skipped"] + 1
        assert value("neuroradix_job_retries_total", error_class="KeyError") == before["retry"] + 1
        assert value("neuroradix_lease_takeovers_total") == before["takeover"] + 1
        assert value("neuroradix_stage_duration_seconds_count", stage="decode") == before["decode"] + 1
        assert value("neuroradix_studies_processed_total", analyzer="lung-hu", status="ok") == before["lung"] + 1
        assert ledger.claim("w2", 60) is None
        assert JOB_ID.get() is None
    finally:
        ledger.engine.dispose()


def test_metrics_route_needs_a_token_and_merges_the_workers_files(tmp_path, monkeypatch):
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    settings = Settings(
        orthanc_url="http://127.0.0.1:1",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token="a" * 20,
        sidecar_reader_token="r" * 20,
        var_dir=tmp_path,
    )
    ledger = Ledger(settings.resolved_ledger_url)
    ledger.enqueue("1.2.3.4", VERSION)
    client = TestClient(create_app(settings, ledger=ledger, run_reconciler=False))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 20}).status_code == 401
    # A worker process in multiprocess mode (as the sidecar starts them) counts a succeeded job.
    folder = metrics.prepare_multiprocess_dir(metrics.multiprocess_dir(tmp_path))
    code = "from neuroradix.jobs import metrics; metrics.JOBS_FINISHED.labels('succeeded').inc(3)"
    env = {**os.environ, metrics.MULTIPROC_ENV: str(folder)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert list(folder.glob("counter_*.db"))
    for token in ("r" * 20, "a" * 20):
        response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert 'neuroradix_jobs_finished_total{outcome="succeeded"} 3.0' in response.text
        assert 'neuroradix_jobs{state="queued"} 1.0' in response.text
        assert "neuroradix_queue_depth 1.0" in response.text
        assert "neuroradix_ledger_up 1.0" in response.text


def test_dashboard_queries_only_metrics_the_node_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bneuroradix_[a-z_]+", expr)}
    assert used, "the dashboard queries no neuroradix metric"
    assert used <= metric_names(), used - metric_names()
    wanted = {
        "neuroradix_queue_depth",
        "neuroradix_oldest_queued_age_seconds",
        "neuroradix_jobs_finished_total",
        "neuroradix_stage_duration_seconds_bucket",
        "neuroradix_job_failures_total",
        "neuroradix_worker_last_seen_timestamp_seconds",
    }
    assert wanted <= used
    # and the exported text really carries those names (counters with _total ...)
    text = generate_latest(REGISTRY).decode()
    for name, kind in (
        ("neuroradix_jobs_finished_total", "counter"),
        ("neuroradix_lease_takeovers_total", "counter"),
        ("neuroradix_stage_duration_seconds", "histogram"),
        ("neuroradix_worker_last_seen_timestamp_seconds", "gauge"),
    ):
        assert f"# TYPE {name} {kind}" in text


def test_json_logs_carry_job_id_and_study_hash(monkeypatch):
    monkeypatch.setenv("NEURORADIX_LOG_FORMAT", "json")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    try:
        cli._setup_logging(verbose=False)
        assert all(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
        token_job, token_study = JOB_ID.set(17), STUDY.set("abcd1234")
        try:
            logging.getLogger("neuroradix.test").warning("job %d: done", 17)
        finally:
            JOB_ID.reset(token_job)
            STUDY.reset(token_study)
        logging.getLogger("neuroradix.test").warning("idle")
    finally:
        root.handlers, root.level = saved
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "neuroradix.test"
    assert lines[0]["message"] == "job 17: done" and lines[0]["job_id"] == 17 and lines[0]["study"] == "abcd1234"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", lines[0]["time"])
    assert "job_id" not in lines[1] and lines[1]["message"] == "idle"


def test_worker_refuses_a_sqlite_ledger_of_another_host(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="PostgreSQL"):
        check_ledger_for_worker(f"sqlite:///{tmp_path / 'elsewhere' / 'ledger.sqlite'}")
    with pytest.raises(ConfigError, match="in memory"):
        check_ledger_for_worker("sqlite://")
    Ledger(f"sqlite:///{tmp_path / 'here.sqlite'}")
    check_ledger_for_worker(f"sqlite:///{tmp_path / 'here.sqlite'}")  # same host: fine
    check_ledger_for_worker("postgresql+psycopg://u:p@db.example:5432/ledger")

    env_file = tmp_path / "worker.env"
    env_file.write_text(
        f"NEURORADIX_LEDGER_URL='sqlite:///{tmp_path / 'elsewhere.sqlite'}'\n"
        "NEURORADIX_ORTHANC_URL='http://127.0.0.1:1'\nNEURORADIX_ORTHANC_USER='s'\nNEURORADIX_ORTHANC_PASSWORD='p'\n"
    )
    # The command writes the env file and --device into os.environ: set then delete each key through
    # monkeypatch so that whatever the command leaves behind is undone after the test.
    touched = ("LEDGER_URL", "ORTHANC_URL", "ORTHANC_USER", "ORTHANC_PASSWORD", "DEVICE", "SIDECAR_TOKEN")
    for key in (*(f"NEURORADIX_{k}" for k in touched), "SIDECAR_TOKEN", "LEDGER_URL"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    assert cli.main(["worker", "--env-file", str(env_file), "--device", "cpu"]) == 2
    assert "a SQLite ledger serves workers on its own host only" in capsys.readouterr().err


def test_worker_env_holds_what_a_worker_needs_and_no_api_token():
    env = {
        "NEURORADIX_ORTHANC_URL": "http://127.0.0.1:8042",
        "NEURORADIX_ORTHANC_USER": "neuroradix-sidecar",
        "NEURORADIX_ORTHANC_PASSWORD": "pw",
        "NEURORADIX_UID_KEY": "k" * 64,
        "NEURORADIX_VAR_DIR": "/srv/var",
        "NEURORADIX_ANALYZERS": "lung-hu",
        "NEURORADIX_SIDECAR_TOKEN": "admin-secret",
        "PATH": "/usr/bin",
    }
    values = worker_env_values(env, "postgresql+psycopg://u:p@127.0.0.1:5/db")
    assert values["NEURORADIX_LEDGER_URL"] == "postgresql+psycopg://u:p@127.0.0.1:5/db"
    assert values["NEURORADIX_ORTHANC_USER"] == "neuroradix-sidecar"
    assert values["NEURORADIX_ANALYZERS"] == "lung-hu" and values["NEURORADIX_UID_KEY"] == "k" * 64
    assert "NEURORADIX_SIDECAR_TOKEN" not in values and "PATH" not in values
    assert re.fullmatch(r".+-\d+-3", make_worker_id(3))
