"""The viewer's same-origin proxy without a browser or an Orthanc (fake upstream, fake OHIF dist)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from starlette.testclient import TestClient

from neuroradix.devtools.viewer import (
    ViewerSettings,
    create_app,
    read_env_file,
    register,
    rewrite_dicomweb_urls,
    settings_from_files,
    stored_syntax_accept,
    study_url,
)
from neuroradix.errors import ConfigError

ORTHANC = "http://127.0.0.1:8042"
STUDY = "1.2.3.4"
METADATA = [
    {
        "0020000D": {"vr": "UI", "Value": [STUDY]},
        "7FE00010": {
            "vr": "OB",
            "BulkDataURI": f"{ORTHANC}/dicom-web/studies/{STUDY}/series/5/instances/6/bulk/7fe00010",
        },
        "00081190": {"vr": "UR", "Value": [f"http://localhost:8042/dicom-web/studies/{STUDY}"]},
        "00081030": {"vr": "LO", "Value": ["see https://example.org/other/path"]},
    }
]


@pytest.fixture()
def dist(tmp_path):
    folder = tmp_path / "dist"
    folder.mkdir()
    (folder / "index.html").write_text("<html>OHIF index</html>")
    (folder / "app.bundle.js").write_text("console.log('bundle')")
    (folder / "app-config.js").write_text("window.config = {name: 'from dist'};")
    config = tmp_path / "app-config.js"
    config.write_text("window.config = {name: 'neuroradix'};")
    return folder, config


class FakeOrthanc:
    """Records what the proxy sends; answers like Orthanc's DICOMweb plugin."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[httpx.Request] = []
        self.fail_first = fail_first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=METADATA, headers={"content-type": "application/dicom+json"})
        if "/frames/" in request.url.path or "/instances/" in request.url.path:
            return httpx.Response(
                200,
                content=b"\x00\x01" * 1000,
                headers={"content-type": 'multipart/related; type="application/octet-stream"'},
            )
        return httpx.Response(404, text="unknown")


def make_client(dist, fake: FakeOrthanc) -> TestClient:
    folder, config = dist
    settings = ViewerSettings(ORTHANC, "alice", "s3cret", dist_dir=folder, config_file=config)
    return TestClient(create_app(settings, transport=httpx.MockTransport(fake)))


def test_metadata_is_proxied_with_auth_and_urls_made_same_origin(dist):
    fake = FakeOrthanc()
    with make_client(dist, fake) as client:
        reply = client.get(
            f"/dicom-web/studies/{STUDY}/series/5/metadata",
            headers={
                "Accept": "application/dicom+json",
                "Cookie": "session=browser",
                "Authorization": "Bearer browser",
            },
        )
    assert reply.status_code == 200
    body = reply.json()[0]
    assert body["7FE00010"]["BulkDataURI"] == f"/dicom-web/studies/{STUDY}/series/5/instances/6/bulk/7fe00010"
    assert body["00081190"]["Value"] == [f"/dicom-web/studies/{STUDY}"]
    assert body["00081030"]["Value"] == ["see https://example.org/other/path"]  # not a DICOMweb URL
    sent = fake.requests[0]
    assert sent.url == httpx.URL(f"{ORTHANC}/dicom-web/studies/{STUDY}/series/5/metadata")
    assert sent.headers["authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert "cookie" not in sent.headers
    assert sent.headers["accept"] == "application/dicom+json"


def test_query_string_is_passed_on_with_commas_decoded(dist):
    fake = FakeOrthanc()
    with make_client(dist, fake) as client:
        client.get(
            "/dicom-web/studies?StudyInstanceUID=1.2&includefield=00081030%2C00080060%2c0020000D" "&PatientName=A%5EB"
        )
    # Orthanc 1.10.1 does not decode: the commas must arrive as commas, the rest as written.
    assert (
        fake.requests[0].url.query == b"StudyInstanceUID=1.2&includefield=00081030,00080060,0020000D&PatientName=A%5EB"
    )


def test_binary_responses_stream_unchanged(dist):
    fake = FakeOrthanc()
    with make_client(dist, fake) as client:
        reply = client.get(
            f"/dicom-web/studies/{STUDY}/series/5/instances/6/frames/1",
            headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
        )
    assert reply.status_code == 200
    assert reply.content == b"\x00\x01" * 1000
    assert reply.headers["content-type"].startswith("multipart/related")
    assert fake.requests[0].headers["accept"] == "multipart/related; type=application/octet-stream; transfer-syntax=*"


def test_whole_instances_are_asked_for_in_their_stored_syntax(dist):
    fake = FakeOrthanc()
    with make_client(dist, fake) as client:
        client.get(
            f"/dicom-web/studies/{STUDY}/series/5/instances/6",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
    assert fake.requests[0].headers["accept"] == 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.mark.parametrize(
    "accept, expected",
    [
        (
            'multipart/related; type="application/dicom"',
            'multipart/related; type="application/dicom"; transfer-syntax=*',
        ),
        ("multipart/related;type=application/dicom", "multipart/related;type=application/dicom; transfer-syntax=*"),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
        ),
        ("multipart/related; type=application/octet-stream", "multipart/related; type=application/octet-stream"),
        ("application/dicom+json", "application/dicom+json"),
    ],
)
def test_stored_syntax_accept(accept, expected):
    assert stored_syntax_accept(accept) == expected


def test_a_dropped_keep_alive_connection_is_retried(dist):
    fake = FakeOrthanc(fail_first=1)
    with make_client(dist, fake) as client:
        reply = client.get(f"/dicom-web/studies/{STUDY}/series/5/metadata")
    assert reply.status_code == 200
    assert len(fake.requests) == 2


def test_orthanc_down_gives_502(dist):
    fake = FakeOrthanc(fail_first=10)
    with make_client(dist, fake) as client:
        reply = client.get(f"/dicom-web/studies/{STUDY}/series/5/metadata")
    assert reply.status_code == 502
    assert "unreachable" in reply.text


def test_proxy_is_read_only(dist):
    fake = FakeOrthanc()
    with make_client(dist, fake) as client:
        for method in ("POST", "PUT", "DELETE"):
            assert client.request(method, f"/dicom-web/studies/{STUDY}").status_code == 405
    assert fake.requests == []


def test_static_files_config_and_spa_fallback(dist):
    with make_client(dist, FakeOrthanc()) as client:
        assert client.get("/app.bundle.js").text == "console.log('bundle')"
        assert "neuroradix" in client.get("/app-config.js").text  # ours, not dist's
        assert client.get("/").text == "<html>OHIF index</html>"
        spa = client.get(f"/viewer?StudyInstanceUIDs={STUDY}")
        assert spa.status_code == 200 and spa.text == "<html>OHIF index</html>"
        assert client.get("/../../etc/passwd").text == "<html>OHIF index</html>"


def test_rewrite_leaves_other_urls():
    body = json.dumps({"a": "http://h:1/dicom-web/x", "b": "http://h:1/wado?x", "c": "/dicom-web/y"}).encode()
    assert json.loads(rewrite_dicomweb_urls(body)) == {
        "a": "/dicom-web/x",
        "b": "http://h:1/wado?x",
        "c": "/dicom-web/y",
    }


def test_settings_need_every_connection_value(tmp_path):
    with pytest.raises(ConfigError, match="ORTHANC_PASSWORD"):
        ViewerSettings.from_env({"ORTHANC_URL": ORTHANC, "ORTHANC_USER": "u"})
    with pytest.raises(ConfigError, match="ORTHANC_URL"):
        ViewerSettings("localhost:8042", "u", "p")
    settings = ViewerSettings(ORTHANC, "u", "p", dist_dir=tmp_path / "missing")
    with pytest.raises(ConfigError, match="npm ci"):
        settings.check_files()


def test_env_file_and_environment(tmp_path):
    env_file = tmp_path / "node.env"
    env_file.write_text(
        "# written by make up\nexport ORTHANC_URL=http://127.0.0.1:8042\n"
        "ORTHANC_USER='neuroradix'\nORTHANC_PASSWORD=\"p=w\"\nSIDECAR_TOKEN=t\n"
    )
    assert read_env_file(env_file)["ORTHANC_PASSWORD"] == "p=w"
    settings = settings_from_files(env_file, environ={"ORTHANC_USER": "other", "HOME": "/root"})
    assert (settings.orthanc_url, settings.orthanc_user, settings.orthanc_password) == (ORTHANC, "other", "p=w")
    assert read_env_file(tmp_path / "absent.env") == {}
    (tmp_path / "bad.env").write_text("not a setting\n")
    with pytest.raises(ConfigError, match="bad.env:1"):
        read_env_file(tmp_path / "bad.env")


def test_cli_registration_and_urls():
    import argparse

    parser = argparse.ArgumentParser(prog="neuroradix")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["viewer", "--port", "3100", "--open", STUDY, "--no-browser"])
    assert (args.port, args.open, args.no_browser) == (3100, STUDY, True)
    assert callable(args.func)
    assert study_url("http://127.0.0.1:3100/", STUDY) == f"http://127.0.0.1:3100/viewer?StudyInstanceUIDs={STUDY}"
    with pytest.raises(ValueError):
        study_url("http://127.0.0.1:3100", "1.2&evil=1")
