"""The sidecar API: token auth, request validation, idempotent jobs, 404s that say the job state."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from neuroradix.api.app import create_app
from neuroradix.config import Settings
from neuroradix.errors import TransientError
from neuroradix.jobs.ledger import Ledger

TOKEN = "test-token-0123456789abcdef"


class DeadPacs:
    def ping(self):
        raise TransientError("QIDO ping: PACS not reachable (ConnectionError)")


class LivePacs:
    def ping(self):
        return None


def _settings(tmp_path, **extra):
    return Settings(
        orthanc_url="http://127.0.0.1:1", orthanc_user="u", orthanc_password="p",
        sidecar_token=TOKEN, var_dir=tmp_path, **extra,
    )


@pytest.fixture()
def client(tmp_path):
    settings = _settings(tmp_path)
    app = create_app(settings, Ledger(settings.resolved_ledger_url), LivePacs(), run_reconciler=False)
    with TestClient(app) as c:
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_every_v1_route_needs_the_token(client):
    for method, path in [("post", "/v1/jobs"), ("get", "/v1/jobs"), ("get", "/v1/jobs/1"),
                         ("get", "/v1/studies/1.2.3/results.zip"), ("post", "/v1/analyze")]:
        assert getattr(client, method)(path).status_code == 401, path
        assert getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert client.get("/healthz").status_code == 200


def test_job_is_created_once_and_listed(client):
    r1 = client.post("/v1/jobs", json={"study_uid": "1.2.840.99.1"}, headers=AUTH)
    r2 = client.post("/v1/jobs", json={"study_uid": "1.2.840.99.1", "trigger": "stable-study"}, headers=AUTH)
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["id"] == r2.json()["id"] and r1.json()["state"] == "queued"
    listed = client.get("/v1/jobs", params={"study_uid": "1.2.840.99.1"}, headers=AUTH).json()
    assert [j["id"] for j in listed] == [r1.json()["id"]]
    assert client.get(f"/v1/jobs/{r1.json()['id']}", headers=AUTH).json()["study_uid"] == "1.2.840.99.1"
    assert client.get("/v1/jobs/999", headers=AUTH).status_code == 404
    assert client.get("/v1/jobs", params={"state": "queued"}, headers=AUTH).json()[0]["state"] == "queued"


@pytest.mark.parametrize("body", [{}, {"study_uid": "not-a-uid"}, {"study_uid": "1.2.03"},
                                  {"study_uid": "1." * 40 + "1"}, {"study_uid": "1.2", "trigger": "DROP TABLE"},
                                  {"study_uid": 12}])
def test_bad_job_requests_are_422(client, body):
    assert client.post("/v1/jobs", json=body, headers=AUTH).status_code == 422


def test_bad_query_parameters_are_422(client):
    assert client.get("/v1/jobs", params={"state": "exploded"}, headers=AUTH).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 0}, headers=AUTH).status_code == 422
    assert client.get("/v1/jobs", params={"study_uid": "x"}, headers=AUTH).status_code == 422


def test_results_zip_404_tells_the_job_state(client):
    r = client.get("/v1/studies/1.2.840.99.2/results.zip", headers=AUTH)
    assert r.status_code == 404 and r.json()["job_state"] is None
    client.post("/v1/jobs", json={"study_uid": "1.2.840.99.2"}, headers=AUTH)
    r = client.get("/v1/studies/1.2.840.99.2/results.zip", headers=AUTH)
    assert r.status_code == 404 and r.json()["job_state"] == "queued"


def test_analyze_rejects_wrong_uploads(client):
    assert client.post("/v1/analyze", content=b"", headers={**AUTH, "Content-Type": "application/zip"}).status_code == 400
    assert client.post("/v1/analyze", content=b"abc", headers={**AUTH, "Content-Type": "text/plain"}).status_code == 415
    r = client.post("/v1/analyze", content=b"not a zip", headers={**AUTH, "Content-Type": "application/zip"})
    assert r.status_code == 422 and "not a zip" in r.json()["detail"]


def test_readyz_reports_a_dead_pacs(tmp_path):
    settings = _settings(tmp_path)
    app = create_app(settings, Ledger(settings.resolved_ledger_url), DeadPacs(), run_reconciler=False)
    with TestClient(app) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["pacs"].startswith("error")


def test_openapi_documents_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/healthz", "/readyz", "/v1/studies/{study_uid}/results.zip", "/v1/analyze"} <= set(paths)


def test_settings_refuse_weak_or_missing_secrets(tmp_path, monkeypatch):
    for key in ("NEURORADIX_SIDECAR_TOKEN", "SIDECAR_TOKEN", "ORTHANC_PASSWORD", "NEURORADIX_ORTHANC_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="sidecar_token|SIDECAR_TOKEN"):
        Settings(orthanc_url="http://x", orthanc_user="u", orthanc_password="p", var_dir=tmp_path)
    with pytest.raises(ValueError, match="real secret"):
        Settings(orthanc_url="http://x", orthanc_user="u", orthanc_password="p", sidecar_token="changeme")
    with pytest.raises(ValueError, match="analyzers"):
        _settings(tmp_path, analyzers="lung-hu,magic")
