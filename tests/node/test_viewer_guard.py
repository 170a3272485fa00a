"""The viewer proxy's guard without Orthanc: traversal refused before routing, Host check, login,
the viewer account from node.env. (Against a real Orthanc: tests/integration/test_security.py.)"""

from __future__ import annotations

import argparse
import base64

import httpx
import pytest
from starlette.testclient import TestClient

from neuroradix.devtools.viewer import ViewerSettings, create_app, register, run, settings_from_files, unsafe_path
from neuroradix.errors import ConfigError

ORTHANC = "http://127.0.0.1:8042"


@pytest.fixture()
def files(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>OHIF</html>")
    config = tmp_path / "app-config.js"
    config.write_text("window.config = {};")
    return dist, config


def _client(files, seen: list, **kwargs) -> TestClient:
    dist, config = files

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[], headers={"content-type": "application/dicom+json"})

    settings = ViewerSettings(ORTHANC, "neuroradix-viewer", "pw", dist_dir=dist, config_file=config, **kwargs)
    return TestClient(create_app(settings, transport=httpx.MockTransport(upstream)))


@pytest.mark.parametrize(
    "raw",
    [
        b"/dicom-web/%2e%2e/patients",
        b"/dicom-web/%2E./patients",
        b"/dicom-web/..%2Fpatients",
        b"/dicom-web/%252e%252e/patients",
        b"/dicom-web/a%5c..%5cpatients",
        b"/dicom-web/studies/./x",
    ],
)
def test_unsafe_paths(raw):
    from urllib.parse import unquote

    assert unsafe_path(raw, unquote(raw.decode()))


def test_safe_paths():
    for raw in (b"/dicom-web/studies/1.2.3/series/4.5/metadata", b"/viewer", b"/app.bundle.js", b"/"):
        assert not unsafe_path(raw, raw.decode())


@pytest.mark.parametrize(
    "path", ["/dicom-web/%2e%2e/patients", "/dicom-web/..%2fsystem", "/dicom-web/%252e%252e/x", "/%2e%2e/etc/passwd"]
)
def test_encoded_traversal_is_400_and_nothing_goes_upstream(files, path):
    seen: list = []
    with _client(files, seen) as client:
        assert client.get(path).status_code == 400
    assert seen == []


def test_host_header_must_name_this_server(files):
    seen: list = []
    with _client(files, seen) as client:
        assert client.get("/dicom-web/studies", headers={"Host": "attacker.example"}).status_code == 421
        assert seen == []
        assert client.get("/dicom-web/studies").status_code == 200
    assert seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"neuroradix-viewer:pw").decode()


def test_login_when_configured(files):
    seen: list = []
    with _client(files, seen, login=("reader", "s3cret")) as client:
        refused = client.get("/dicom-web/studies")
        assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
        assert client.get("/", auth=("reader", "wrong")).status_code == 401
        assert client.get("/dicom-web/studies", auth=("reader", "s3cret")).status_code == 200
    assert len(seen) == 1


def test_viewer_account_from_node_env_and_login_beyond_loopback(tmp_path, capsys):
    env_file = tmp_path / "node.env"
    env_file.write_text(
        "ORTHANC_URL=http://127.0.0.1:8042\nORTHANC_USER=people\nORTHANC_PASSWORD=p\n"
        "VIEWER_ORTHANC_USER=neuroradix-viewer\nVIEWER_ORTHANC_PASSWORD=v\n"
    )
    settings = settings_from_files(env_file, environ={})
    assert (settings.orthanc_user, settings.orthanc_password) == ("neuroradix-viewer", "v")
    with pytest.raises(ConfigError, match="user and a password"):
        ViewerSettings(ORTHANC, "u", "p", login=("reader", ""))
    parser = argparse.ArgumentParser(prog="neuroradix")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["viewer", "--host", "0.0.0.0", "--env-file", str(env_file), "--no-browser"])
    assert run(args) == 2
    assert "NEURORADIX_VIEWER_LOGIN" in capsys.readouterr().err
