"""The sidecar API: token auth, request validation, idempotent jobs, 404s that say the job state."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from neuroradix.api.app import create_app
from neuroradix.config import Settings
from neuroradix.errors import TransientError
from neuroradix.jobs.ledger import Ledger
from neuroradix.types import ReportAttention

TOKEN = "test-token-0123456789abcdef"


class DeadPacs:
    def ping(self):
        raise TransientError("QIDO ping: PACS not reachable (ConnectionError)")


class LivePacs:
    def ping(self):
        return None


def _settings(tmp_path, **extra):
    return Settings(
        orthanc_url="http://127.0.0.1:1",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token=TOKEN,
        var_dir=tmp_path,
        **extra,
    )


@pytest.fixture()
def client(tmp_path):
    settings = _settings(tmp_path)
    app = create_app(settings, Ledger(settings.resolved_ledger_url), LivePacs(), run_reconciler=False)
    with TestClient(app) as c:
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_every_v1_route_needs_the_token(client):
    for method, path in [
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs"),
        ("get", "/v1/jobs/1"),
        ("get", "/v1/studies/1.2.3/results.zip"),
        ("get", "/v1/jobs/1/results.zip"),
        ("get", "/v1/studies/1.2.3/report-attention"),
        ("post", "/v1/analyze"),
    ]:
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


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"study_uid": "not-a-uid"},
        {"study_uid": "1.2.03"},
        {"study_uid": "1." * 40 + "1"},
        {"study_uid": "1.2", "trigger": "DROP TABLE"},
        {"study_uid": 12},
    ],
)
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
    assert (
        client.post("/v1/analyze", content=b"", headers={**AUTH, "Content-Type": "application/zip"}).status_code == 400
    )
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
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/healthz",
        "/readyz",
        "/v1/studies/{study_uid}/results.zip",
        "/v1/jobs/{job_id}/results.zip",
        "/v1/analyze",
        "/v1/studies/{study_uid}/report-attention",
    } <= set(paths)
    assert "wait" in {p["name"] for p in paths["/v1/analyze"]["post"]["parameters"]}


def test_settings_refuse_weak_or_missing_secrets(tmp_path, monkeypatch):
    for key in ("NEURORADIX_SIDECAR_TOKEN", "SIDECAR_TOKEN", "ORTHANC_PASSWORD", "NEURORADIX_ORTHANC_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="sidecar_token|SIDECAR_TOKEN"):
        Settings(orthanc_url="http://x", orthanc_user="u", orthanc_password="p", var_dir=tmp_path)
    with pytest.raises(ValueError, match="real secret"):
        Settings(orthanc_url="http://x", orthanc_user="u", orthanc_password="p", sidecar_token="changeme")
    with pytest.raises(ValueError, match="analyzers"):
        _settings(tmp_path, analyzers="lung-hu,magic")


def test_report_attention_routes_read_the_recorded_attention(client, tmp_path):
    """The job records a ReportAttention; the API renders a token's map with the deep analyzer's renderer."""
    from neuroradix.analyzers.deep import report_token_map  # noqa: PLC0415 - torch only for this test

    grid = {"starts": [[0, 8], [0], [0]], "roi": 8, "shape": [16, 8, 8], "affine": np.eye(4).tolist()}
    attention = ReportAttention(("The", " lungs"), np.array([[1.0, 0.0], [0.0, 1.0]]), grid, (16, 8, 8), np.eye(4))
    ledger = client.app.state.ledger
    settings = client.app.state.settings
    job, _ = ledger.enqueue("1.2.840.99.7", settings.pipeline_version)
    assert client.get("/v1/studies/1.2.840.99.7/report-attention", headers=AUTH).status_code == 404
    ledger.claim("w", 60)
    ledger.succeed(
        job.id,
        "w",
        input_series_uid="1.2.3",
        output_uids=[],
        timings={},
        details={"report_attention": {"swinunetr-ctrate": attention.to_dict()}},
    )
    r = client.get("/v1/studies/1.2.840.99.7/report-attention", headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["analyzer"] == "swinunetr-ctrate" and [t["token"] for t in body["tokens"]] == ["The", " lungs"]
    assert body["patch_centres_lps"] == [[3.5, 3.5, 3.5], [11.5, 3.5, 3.5]]
    r = client.get("/v1/studies/1.2.840.99.7/report-attention/0.nii.gz", headers=AUTH)
    assert r.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
    data = np.asarray(image.dataobj)  # (column, row, slice)
    expected = report_token_map(attention, 0).array
    assert np.allclose(np.transpose(data, (2, 1, 0)), expected, atol=1e-5)
    assert data[..., :8].mean() > 1.5 > 0.5 > data[..., 8:].mean()  # token 0 looked at the first patch
    assert client.get("/v1/studies/1.2.840.99.7/report-attention/2.nii.gz", headers=AUTH).status_code == 404
    # the results zip of a job whose files are not on this node says so instead of decoding anything
    r = client.get("/v1/studies/1.2.840.99.7/results.zip", headers=AUTH)
    assert r.status_code == 404 and "rerun" in r.json()["reason"] and r.json()["job_state"] == "succeeded"
