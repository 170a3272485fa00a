"""Scoped sidecar tokens, authentication before the body is read, and a cached /readyz."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from neuroradix.api.app import create_app
from neuroradix.api.deps import READ, require_scope, required_scope
from neuroradix.config import Settings
from neuroradix.errors import PacsAuthError, TransientError
from neuroradix.jobs.ledger import Ledger
from neuroradix.pacs.dicomweb import PacsClient

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
PLUGIN = "plugin-token-0123456789abcdef"
TOKENS = {"admin": ADMIN, "reader": READER, "plugin": PLUGIN}


class CountingPacs:
    """A PACS that answers and counts the pings (or raises ``error``)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.pings = 0
        self.error = error
        self.lock = threading.Lock()

    def ping(self) -> None:
        with self.lock:
            self.pings += 1
        if self.error is not None:
            raise self.error


def _settings(tmp_path, **extra) -> Settings:
    values = {
        "orthanc_url": "http://127.0.0.1:1",
        "orthanc_user": "u",
        "orthanc_password": "p",
        "sidecar_token": ADMIN,
        "sidecar_reader_token": READER,
        "sidecar_plugin_token": PLUGIN,
        "var_dir": tmp_path,
        **extra,
    }
    return Settings(**values)


def _app(tmp_path, pacs=None, **extra) -> FastAPI:
    settings = _settings(tmp_path, **extra)
    return create_app(settings, Ledger(settings.resolved_ledger_url), pacs or CountingPacs(), run_reconciler=False)


@pytest.fixture()
def client(tmp_path):
    with TestClient(_app(tmp_path)) as c:
        yield c


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# route class -> (method, path, kwargs) and the roles allowed
ROUTES = {
    "queue": (("post", "/v1/jobs", {"json": {"study_uid": "1.2.840.99.7"}}), {"admin", "plugin"}),
    "list-jobs": (("get", "/v1/jobs", {}), {"admin", "reader"}),
    "read-job": (("get", "/v1/jobs/1", {}), {"admin", "reader"}),
    "results-zip": (("get", "/v1/studies/1.2.840.99.7/results.zip", {}), {"admin", "reader"}),
    "attention": (("get", "/v1/studies/1.2.840.99.7/report-attention", {}), {"admin", "reader"}),
    "analyze": (("post", "/v1/analyze", {"content": b"", "headers": {"Content-Type": "application/zip"}}), {"admin"}),
}


@pytest.mark.parametrize("role", sorted(TOKENS))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_each_token_against_each_route_class(client, role, route):
    (method, path, kwargs), allowed = ROUTES[route]
    if route != "queue":  # something to read
        client.post("/v1/jobs", json={"study_uid": "1.2.840.99.7"}, headers=_bearer(ADMIN))
    kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), **_bearer(TOKENS[role])}}
    response = getattr(client, method)(path, **kwargs)
    if role in allowed:
        assert response.status_code not in (401, 403), (role, route, response.text)
    else:
        assert response.status_code == 403, (role, route, response.status_code)
        assert role in response.json()["detail"]
    anonymous = getattr(client, method)(path, **{k: v for k, v in kwargs.items() if k != "headers"})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"


def test_the_plugin_token_queues_and_the_reader_reads(client):
    queued = client.post("/v1/jobs", json={"study_uid": "1.2.840.99.8"}, headers=_bearer(PLUGIN))
    assert queued.status_code == 202
    listed = client.get("/v1/jobs", params={"study_uid": "1.2.840.99.8"}, headers=_bearer(READER))
    assert listed.status_code == 200 and [j["id"] for j in listed.json()] == [queued.json()["id"]]
    assert client.get("/v1/jobs", headers={"Authorization": f"Basic {READER}"}).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer"}).status_code == 401


def test_required_scope_of_a_request():
    assert required_scope("POST", "/v1/jobs") == "queue" and required_scope("POST", "/v1/jobs/") == "queue"
    assert required_scope("GET", "/v1/jobs") == required_scope("HEAD", "/metrics") == "read"
    assert required_scope("POST", "/v1/analyze") == required_scope("DELETE", "/v1/jobs/1") == "admin"
    assert required_scope("POST", "/v1/jobs/1") == "admin"


async def _call(app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """Call the ASGI app directly; returns (status, how often it asked for the body)."""
    asked = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": b"{" * 65536, "more_body": asked < 16}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return sent[0]["status"], asked


@pytest.mark.parametrize(
    ("path", "content_type", "token", "expected"),
    [
        ("/v1/jobs", b"application/json", None, 401),
        ("/v1/jobs", b"application/json", "wrong-token-0123456789", 401),
        ("/v1/jobs", b"application/json", READER, 403),
        ("/v1/analyze", b"application/zip", None, 401),
        ("/v1/analyze", b"application/zip", READER, 403),
        ("/v1/analyze", b"application/zip", PLUGIN, 403),
        ("/v1/analyze", b"multipart/form-data; boundary=x", None, 401),
    ],
)
def test_refused_before_the_body_is_read(tmp_path, path, content_type, token, expected):
    """A 10 GB body announced without a (sufficient) token: answered at once, never read."""
    app = _app(tmp_path)
    headers = [(b"content-type", content_type), (b"content-length", b"10737418240"), (b"host", b"x")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    status, asked = asyncio.run(_call(app, "POST", path, headers))
    assert (status, asked) == (expected, 0)


def test_malformed_body_without_a_token_is_401_not_422(client):
    for body in (b"{not json", b"[" * 100000):
        response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 401
    response = client.post(
        "/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json", **_bearer(ADMIN)}
    )
    assert response.status_code == 422  # with the token the body is parsed, and refused


def test_require_scope_dependency_for_routes_outside_v1(tmp_path):
    """What a /metrics route declares: ``Depends(require_scope(READ))``."""
    app = FastAPI()
    app.state.settings = _settings(tmp_path)

    @app.get("/stats", dependencies=[Depends(require_scope(READ))])
    def stats() -> dict:
        return {"ok": True}

    with TestClient(app) as c:
        assert c.get("/stats", headers=_bearer(READER)).status_code == 200
        assert c.get("/stats", headers=_bearer(ADMIN)).status_code == 200
        assert c.get("/stats", headers=_bearer(PLUGIN)).status_code == 403
        assert c.get("/stats").status_code == 401
    with pytest.raises(ValueError, match="needed"):
        require_scope("write")


def test_metrics_path_is_protected_by_the_middleware(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=_bearer(PLUGIN)).status_code == 403
    assert client.get("/metrics", headers=_bearer(READER)).status_code in (200, 404)  # 404 until a route exists


def test_scoped_tokens_are_optional_but_real_and_distinct(tmp_path):
    alone = _settings(tmp_path, sidecar_reader_token="", sidecar_plugin_token=None)
    assert alone.sidecar_reader_token is None and alone.sidecar_plugin_token is None
    with pytest.raises(ValidationError, match="SIDECAR_PLUGIN_TOKEN"):
        _settings(tmp_path, sidecar_plugin_token="short")
    with pytest.raises(ValidationError, match="differ"):
        _settings(tmp_path, sidecar_reader_token=ADMIN)
    # Without scoped tokens only the admin token is accepted.
    app = create_app(alone, Ledger(alone.resolved_ledger_url), CountingPacs(), run_reconciler=False)
    with TestClient(app) as c:
        assert c.get("/v1/jobs", headers=_bearer(READER)).status_code == 401
        assert c.get("/v1/jobs", headers=_bearer(ADMIN)).status_code == 200


def test_scoped_tokens_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORADIX_SIDECAR_PLUGIN_TOKEN", PLUGIN)
    monkeypatch.setenv("SIDECAR_READER_TOKEN", READER)  # the name var/node.env uses
    settings = Settings(orthanc_url="http://x", orthanc_user="u", orthanc_password="p", sidecar_token=ADMIN)
    assert settings.sidecar_plugin_token.get_secret_value() == PLUGIN
    assert settings.sidecar_reader_token.get_secret_value() == READER


# --- /readyz -----------------------------------------------------------------------------


def test_readyz_flood_costs_the_pacs_one_ping_per_interval(tmp_path):
    pacs = CountingPacs()
    app = _app(tmp_path, pacs, readyz_cache_seconds=60)
    now = [1000.0]
    app.state.readiness.clock = lambda: now[0]
    with TestClient(app) as c:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: c.get("/readyz").status_code, range(64)))
        assert codes == [200] * 64 and pacs.pings == 1
        now[0] += 59
        assert c.get("/readyz").status_code == 200 and pacs.pings == 1
        now[0] += 2
        assert c.get("/readyz").status_code == 200 and pacs.pings == 2


def test_readyz_caches_a_failure_too_and_recovers(tmp_path):
    pacs = CountingPacs(TransientError("QIDO ping: PACS not reachable (ConnectionError)"))
    app = _app(tmp_path, pacs, readyz_cache_seconds=5)
    now = [0.0]
    app.state.readiness.clock = lambda: now[0]
    with TestClient(app) as c:
        assert [c.get("/readyz").status_code for _ in range(10)] == [503] * 10 and pacs.pings == 1
        pacs.error = None
        now[0] += 5
        assert c.get("/readyz").status_code == 200 and pacs.pings == 2


def test_readyz_uncached_with_zero(tmp_path):
    pacs = CountingPacs()
    with TestClient(_app(tmp_path, pacs, readyz_cache_seconds=0)) as c:
        for _ in range(3):
            c.get("/readyz")
    assert pacs.pings == 3


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A PACS that refuses every request with ``status`` (a rotated password)."""

    status = 401

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.status)
        self.send_header("WWW-Authenticate", 'Basic realm="Orthanc"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("code", [401, 403])
def test_readyz_is_red_when_the_pacs_refuses_the_sidecars_credentials(tmp_path, code):
    handler = type("Refusing", (_Refusing,), {"status": code})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        pacs = PacsClient(url, "neuroradix-sidecar", "old-password", timeout=10)
        with pytest.raises(PacsAuthError, match=f"credentials \\(HTTP {code}\\)"):
            pacs.ping()
        with TestClient(_app(tmp_path, pacs)) as c:
            response = c.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"] == {
            "ledger": "ok",
            "pacs": f"error: QIDO ping: PACS refused the sidecar's credentials (HTTP {code})",
        }
    finally:
        server.shutdown()
        server.server_close()


def test_readyz_is_red_when_the_ledger_fails(tmp_path):
    app = _app(tmp_path)

    class BrokenLedger:
        def counts(self) -> dict:
            raise OSError("disk full")

    app.state.readiness.ledger = BrokenLedger()
    with TestClient(app) as c:
        response = c.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["ledger"] == "error: OSError"
    assert json.dumps(response.json()).count("disk full") == 0
