"""docs/security.md against a real Orthanc and sidecar: known senders only, no forged results, least
privilege, a viewer proxy that forwards no traversal, and no identifiers in files or logs."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pydicom
import pytest
import uvicorn

from neuroradix.deploy import launcher
from neuroradix.deploy.orthanc import free_port
from neuroradix.deploy.senders import Sender
from neuroradix.devtools.viewer import ViewerSettings, create_app
from neuroradix.errors import BadInputError
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.samples.phantom import thorax_phantom
from tests.harness import EphemeralNode, require_orthanc
from tests.support import require_tool

OWN = "Neuro Radix"
WRONG_HOST = Sender("elsewhere", "ELSEWHERE", "127.0.0.2")  # a known AE title, expected from another host


@pytest.fixture(scope="module")
def secure_node(tmp_path_factory):
    require_orthanc()
    require_tool("storescu")
    running = EphemeralNode(
        tmp_path_factory.mktemp("secure-node"), reconcile_seconds=3600, senders=[WRONG_HOST]
    ).start()
    yield running
    running.stop()


def _study(seed: str) -> list[pydicom.Dataset]:
    volume, _ = thorax_phantom()
    datasets = volume_to_ct_series(volume, uid_seed=seed)
    tag = os.urandom(4).hex().upper()
    for ds in datasets:  # identifiers that cannot turn up in a log by chance
        ds.PatientID = f"SECPID{tag}"
        ds.PatientName = f"Secret^Patient{tag}"
    return datasets


@pytest.fixture(scope="module")
def processed(secure_node, tmp_path_factory):
    """A study sent by the local sender over C-STORE and processed: (datasets, job)."""
    datasets = _study("sec-processed")
    files = write_series(datasets, tmp_path_factory.mktemp("sec-ct"))
    secure_node.storescu(files)
    study_uid = str(datasets[0].StudyInstanceUID)
    job = secure_node.wait_job(study_uid, states=("succeeded",), timeout=180)
    return datasets, job


def _request(
    node: EphemeralNode, role: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, bytes]:
    user, password = node.accounts()[role]
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        node.config.orthanc_url + path,
        data=body,
        method=method,
        headers={"Authorization": f"Basic {token}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _orthanc_id(node: EphemeralNode, uid: str, level: str) -> str:
    status, body = _request(node, "people", "POST", "/tools/lookup", uid.encode())
    assert status == 200
    return next(item["ID"] for item in json.loads(body) if item["Type"] == level)


def _count_instances(node: EphemeralNode) -> int:
    return len(json.loads(_request(node, "people", "GET", "/instances")[1]))


def _sr(node: EphemeralNode, job: dict) -> tuple[str, bytes]:
    """Orthanc id and stored bytes of the node's SR."""
    for record in job["output_uids"]:
        instance_id = _orthanc_id(node, record["sop_instance_uid"], "Instance")
        data = _request(node, "people", "GET", f"/instances/{instance_id}/file")[1]
        if pydicom.dcmread(io.BytesIO(data)).Modality == "SR":
            return instance_id, data
    raise AssertionError("the job stored no SR")


def _forge(data: bytes) -> pydicom.Dataset:
    forged = pydicom.dcmread(io.BytesIO(data))
    for item in forged.iterall():
        if item.keyword == "TextValue":
            item.value = "FORGED: no abnormality, discharge the patient"
    return forged


def _stow_quietly(client: PacsClient, ds: pydicom.Dataset, study_uid: str) -> None:
    """STOW ``ds``; Orthanc drops a discarded instance without always reporting a failure."""
    try:
        client.store([ds], study_uid)
    except BadInputError:
        pass


# --- 1. known senders only ---------------------------------------------------------------


def test_unknown_ae_title_is_refused_and_nothing_is_stored(secure_node, tmp_path):
    files = write_series(_study("sec-unknown")[:3], tmp_path)
    before = _count_instances(secure_node)
    sent = secure_node.storescu(files, aet="SOMEONE", check=False)
    assert "Association Rejected" in sent.stderr or sent.returncode != 0, sent.stderr
    assert _count_instances(secure_node) == before


def test_known_ae_title_from_the_wrong_host_is_refused(secure_node, tmp_path):
    files = write_series(_study("sec-wrong-host")[:3], tmp_path)
    before = _count_instances(secure_node)
    sent = secure_node.storescu(files, aet=WRONG_HOST.aet, check=False)  # from 127.0.0.1, not 127.0.0.2
    assert "Association Rejected" in sent.stderr or sent.returncode != 0, sent.stderr
    assert _count_instances(secure_node) == before


def test_echo_follows_the_same_rule(secure_node):
    echoscu = require_tool("echoscu")
    port = str(secure_node.config.dicom_port)
    known = subprocess.run(
        [echoscu, "-aet", secure_node.config.calling_aet, "-aec", secure_node.config.aet, "127.0.0.1", port],
        capture_output=True,
        text=True,
    )
    unknown = subprocess.run(
        [echoscu, "-aet", "SOMEONE", "-aec", secure_node.config.aet, "127.0.0.1", port], capture_output=True, text=True
    )
    assert known.returncode == 0, known.stderr
    assert unknown.returncode != 0 or "Rejected" in unknown.stderr


# --- 2. no forged results ----------------------------------------------------------------


def test_forged_sr_over_cstore_and_stow_leaves_the_nodes_sr_byte_identical(secure_node, processed, tmp_path):
    datasets, job = processed
    study_uid = str(datasets[0].StudyInstanceUID)
    instance_id, original = _sr(secure_node, job)
    forged = _forge(original)
    path = tmp_path / "forged.dcm"
    forged.save_as(path, enforce_file_format=True)
    assert path.read_bytes() != original

    sent = secure_node.storescu([path], check=False)  # a known sender
    assert sent.returncode != 0 or "Failed" in sent.stderr or "0124" in sent.stderr, sent.stderr
    people = PacsClient(secure_node.config.orthanc_url + "/dicom-web", *secure_node.accounts()["people"])
    _stow_quietly(people, forged, study_uid)  # refused or dropped: what counts is the stored copy
    status, after = _request(secure_node, "people", "GET", f"/instances/{instance_id}/file")
    assert status == 200 and after == original

    # A new instance that claims to be the node's output is refused too (not just overwrites).
    claim = _forge(original)
    claim.SOPInstanceUID = pydicom.uid.generate_uid()
    claim.file_meta.MediaStorageSOPInstanceUID = claim.SOPInstanceUID
    before = _count_instances(secure_node)
    _stow_quietly(people, claim, study_uid)
    claim_path = tmp_path / "claim.dcm"
    claim.save_as(claim_path, enforce_file_format=True)
    secure_node.storescu([claim_path], check=False)
    assert _count_instances(secure_node) == before


def _intruder(original: bytes, folder: Path) -> tuple[pydicom.Dataset, Path]:
    """A new object in the series of ``original`` that does not claim to be the node's (another Manufacturer)."""
    intruder = _forge(original)
    intruder.Manufacturer = "Scanner Co"
    intruder.SOPInstanceUID = pydicom.uid.generate_uid()
    intruder.file_meta.MediaStorageSOPInstanceUID = intruder.SOPInstanceUID
    path = folder / f"intruder-{intruder.SOPInstanceUID}.dcm"
    intruder.save_as(path, enforce_file_format=True)
    return intruder, path


def _refused(sent: subprocess.CompletedProcess) -> bool:
    return sent.returncode != 0 or "Failed" in sent.stderr or "0124" in sent.stderr


def test_a_foreign_instance_in_the_nodes_result_series_is_refused(secure_node, processed, tmp_path):
    """A known sender cannot slip its own object into a result series (any Manufacturer)."""
    datasets, job = processed
    study_uid = str(datasets[0].StudyInstanceUID)
    _, original = _sr(secure_node, job)
    intruder, path = _intruder(original, tmp_path)
    before = _count_instances(secure_node)
    sent = secure_node.storescu([path], check=False)
    assert _refused(sent), sent.stderr
    people = PacsClient(secure_node.config.orthanc_url + "/dicom-web", *secure_node.accounts()["people"])
    _stow_quietly(people, intruder, study_uid)
    assert _count_instances(secure_node) == before
    status, found = _request(secure_node, "people", "POST", "/tools/lookup", str(intruder.SOPInstanceUID).encode())
    assert status == 200 and json.loads(found) == []


def test_a_rerun_replaces_the_nodes_own_results_through_the_sidecar_account(secure_node, processed, tmp_path):
    datasets, job = processed
    study_uid = str(datasets[0].StudyInstanceUID)
    _, original = _sr(secure_node, job)
    series_uid = str(pydicom.dcmread(io.BytesIO(original)).SeriesInstanceUID)
    series_id = _orthanc_id(secure_node, series_uid, "Series")
    source_id = _orthanc_id(secure_node, str(datasets[0].SeriesInstanceUID), "Series")
    # The sidecar may delete its own series, never a source series; the viewer neither.
    assert _request(secure_node, "sidecar", "DELETE", f"/series/{source_id}")[0] == 403
    assert _request(secure_node, "viewer", "DELETE", f"/series/{series_id}")[0] == 403
    assert _request(secure_node, "sidecar", "DELETE", f"/series/{series_id}")[0] == 200
    # Between the rerun's delete and its store, the series UID stays the node's.
    before = _count_instances(secure_node)
    assert _refused(secure_node.storescu([_intruder(original, tmp_path)[1]], check=False))
    assert _count_instances(secure_node) == before
    replacement = _forge(original)  # new content under the same UIDs, as a rerun stores it
    sidecar = PacsClient(secure_node.config.orthanc_url + "/dicom-web", *secure_node.accounts()["sidecar"])
    sidecar.store([replacement], study_uid)
    new_id = _orthanc_id(secure_node, str(replacement.SOPInstanceUID), "Instance")
    stored = pydicom.dcmread(io.BytesIO(_request(secure_node, "people", "GET", f"/instances/{new_id}/file")[1]))
    texts = [item.value for item in stored.iterall() if item.keyword == "TextValue"]
    assert "FORGED: no abnormality, discharge the patient" in texts


def test_output_uids_are_keyed_per_node(secure_node, processed):
    """Nobody without the node's key can compute the UIDs of its results from public inputs."""
    from neuroradix.uids import derive_uid
    from neuroradix.writers.common import ObjectKind

    datasets, job = processed
    public = set()
    for kind in ObjectKind:
        for index in (None, 0, 1, 2, 3):
            parts = [
                str(datasets[0].StudyInstanceUID),
                str(datasets[0].SeriesInstanceUID),
                job["pipeline_version"],
                "lung-hu",
                kind.tag,
                *([] if index is None else [str(index)]),
            ]
            public |= {derive_uid(*parts, "series"), derive_uid(*parts, "instance")}
            assert derive_uid(*parts, "instance", key=secure_node.config.uid_key) != derive_uid(*parts, "instance")
    stored = {r["sop_instance_uid"] for r in job["output_uids"]} | {
        r["series_instance_uid"] for r in job["output_uids"]
    }
    assert stored and not stored & public


# --- 3. least privilege ------------------------------------------------------------------

ROUTE_CLASSES = {
    # name: (method, path, body) and the roles allowed
    "dicomweb-read": (("GET", "/dicom-web/studies?limit=1", None), {"people", "sidecar", "viewer"}),
    "rest-read": (("GET", "/patients", None), {"people"}),
    "system": (("GET", "/system", None), {"people", "sidecar"}),  # versions: /readyz, the start check
    "plugins": (("GET", "/plugins/python", None), {"people", "sidecar"}),
    "lookup": (("POST", "/tools/lookup", b"1.2.3.4.5.6.7"), {"people", "sidecar"}),
    "find-by-label": (
        ("POST", "/tools/find", b'{"Level": "Study", "Labels": ["ai-urgent"], "Query": {}}'),
        {"people", "sidecar", "viewer"},
    ),
    "labels": (("GET", "/tools/labels", None), {"people", "sidecar", "viewer"}),
    "count": (("POST", "/tools/count-resources", b'{"Level": "Study", "Query": {}}'), {"people"}),
    "modalities": (("GET", "/modalities", None), {"people"}),
}


@pytest.mark.parametrize("role", ["people", "sidecar", "viewer"])
@pytest.mark.parametrize("route", sorted(ROUTE_CLASSES))
def test_each_account_against_each_route_class(secure_node, role, route):
    (method, path, body), allowed = ROUTE_CLASSES[route]
    status, _ = _request(secure_node, role, method, path, body)
    if role in allowed:
        assert 200 <= status < 300, (role, route, status)
    else:
        assert status == 403, (role, route, status)


def test_stow_is_for_the_sidecar_and_people_not_the_viewer(secure_node, tmp_path):
    ds = _study("sec-stow")[0]
    for role, expected in (("viewer", 403),):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue() + b"\r\n--B--\r\n"
        status, _ = _request(
            secure_node,
            role,
            "POST",
            "/dicom-web/studies",
            body,
            {"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'},
        )
        assert status == expected


# --- 3b. scoped sidecar tokens ------------------------------------------------------------


def _sidecar(
    node: EphemeralNode, method: str, path: str, token: str | None, body: bytes | None = None
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(node.config.sidecar_url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _tokens(node: EphemeralNode) -> dict[str, str]:
    c = node.config
    return {"admin": c.sidecar_token, "reader": c.sidecar_reader_token, "plugin": c.sidecar_plugin_token}


def test_each_sidecar_token_against_each_route_class(secure_node, processed):
    datasets, job = processed
    study_uid = str(datasets[0].StudyInstanceUID)
    queue = json.dumps({"study_uid": study_uid}).encode()  # idempotent: the existing job, no new work
    routes = {
        "queue": (("POST", "/v1/jobs", queue), {"admin", "plugin"}),
        "jobs": (("GET", f"/v1/jobs?study_uid={study_uid}", None), {"admin", "reader"}),
        "job": (("GET", f"/v1/jobs/{job['id']}", None), {"admin", "reader"}),
        "results": (("GET", f"/v1/studies/{study_uid}/results.zip", None), {"admin", "reader"}),
        "analyze": (("POST", "/v1/analyze", b""), {"admin"}),
    }
    for role, token in _tokens(secure_node).items():
        for name, ((method, path, body), allowed) in routes.items():
            status, _ = _sidecar(secure_node, method, path, token, body)
            if role not in allowed:
                assert status == 403, (role, name, status)
            elif name == "analyze":
                assert status not in (401, 403), (role, name, status)  # an empty upload: refused as such
            else:
                assert 200 <= status < 300, (role, name, status)
            assert _sidecar(secure_node, method, path, None, body)[0] == 401, name
            assert _sidecar(secure_node, method, path, token[::-1], body)[0] == 401, name


def test_the_plugin_hands_off_with_its_own_token_and_orthanc_holds_no_other(secure_node, processed):
    _, job = processed
    assert job["trigger"] == "stable-study"  # queued by the plugin, with the plugin's token
    pid = secure_node.orthanc.process.pid
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    tokens = {item.partition(b"=")[0].decode() for item in environ if b"TOKEN" in item.partition(b"=")[0]}
    assert tokens == {"NEURORADIX_SIDECAR_PLUGIN_TOKEN"}
    held = b"\0".join(environ)
    assert secure_node.config.sidecar_token.encode() not in held
    assert secure_node.config.sidecar_reader_token.encode() not in held


def _raw_post(port: int, path: str, headers: dict, payload: bytes) -> tuple[int, float]:
    """Announce a huge body, send a little of it, and return (status, seconds to the answer)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}\r\n".encode() + payload)
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), time.monotonic() - started


@pytest.mark.parametrize(
    ("path", "content_type", "role", "expected"),
    [
        ("/v1/jobs", "application/json", None, 401),
        ("/v1/analyze", "application/zip", None, 401),
        ("/v1/analyze", "multipart/form-data; boundary=x", None, 401),
        ("/v1/analyze", "application/zip", "reader", 403),
        ("/v1/jobs", "application/json", "reader", 403),
    ],
)
def test_a_huge_body_without_a_sufficient_token_is_refused_before_it_is_read(
    secure_node, path, content_type, role, expected
):
    headers = {"Content-Type": content_type, "Content-Length": str(10 * 1024**3)}
    if role is not None:
        headers["Authorization"] = f"Bearer {_tokens(secure_node)[role]}"
    uploads = secure_node.root / "uploads"
    before = sorted(uploads.iterdir()) if uploads.exists() else []
    status, seconds = _raw_post(secure_node.config.sidecar_port, path, headers, b"{" * 65536)
    assert status == expected
    assert (sorted(uploads.iterdir()) if uploads.exists() else []) == before  # nothing spooled
    print(f"{path} {role or 'anonymous'}: {status} after {seconds * 1000:.0f} ms (10 GB announced)")


# --- 4. the viewer proxy -----------------------------------------------------------------


class _CountingTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.raw_path.decode())
        return await self.inner.handle_async_request(request)


@pytest.fixture(scope="module")
def proxy(secure_node, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    (dist / "index.html").write_text("<html>OHIF</html>")
    config = dist / "app-config.js"
    config.write_text("window.config = {};")
    transport = _CountingTransport()
    user, password = secure_node.accounts()["viewer"]
    app = create_app(
        ViewerSettings(secure_node.config.orthanc_url, user, password, dist_dir=dist, config_file=config),
        transport=transport,
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port, transport
    server.should_exit = True
    thread.join(10)


def _raw_get(port: int, path: str, host: str | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", host or f"127.0.0.1:{port}")
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


TRAVERSALS = [
    "/dicom-web/../patients",
    "/dicom-web/studies/../../patients",
    "/dicom-web/%2e%2e/patients",
    "/dicom-web/%2E%2E/system",
    "/dicom-web/..%2fpatients",
    "/dicom-web/studies%2f..%2f..%2fpatients",
    "/dicom-web/%252e%252e/patients",
    "/dicom-web/..%252fpatients",
    "/dicom-web/.%2e/patients",
    "/dicom-web/..%5cpatients",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_proxy_refuses_traversal_and_nothing_reaches_orthanc(proxy, path):
    port, transport = proxy
    before = len(transport.paths)
    assert _raw_get(port, path) == 400
    assert len(transport.paths) == before


def test_proxy_checks_the_host_and_serves_dicomweb_with_the_viewer_account(proxy, secure_node):
    port, transport = proxy
    assert _raw_get(port, "/dicom-web/studies?limit=1", host=f"evil.example:{port}") == 421
    assert _raw_get(port, "/dicom-web/studies?limit=1") == 200
    assert _raw_get(port, "/dicom-web/studies?limit=1", host=f"localhost:{port}") == 200
    assert transport.paths and all(p.startswith("/dicom-web/") for p in transport.paths)
    # Even a path that slipped through would meet the viewer account's scope in Orthanc.
    assert _request(secure_node, "viewer", "GET", "/patients")[0] == 403


# --- 5. nothing identifying where it should not be --------------------------------------


def _modes(root: Path) -> list[str]:
    wrong = []
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            mode = stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
            if mode & 0o077:
                wrong.append(f"{os.path.join(folder, name)} {oct(mode)}")
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                wrong.append(f"{path} {oct(mode)}")
    return wrong


def test_files_are_private_and_logs_hold_no_identifiers_after_a_study(secure_node, processed):
    datasets, _ = processed
    root = secure_node.root
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert _modes(root) == []
    assert any(p.suffix == ".log" for p in root.rglob("*.log"))
    identifiers = [
        str(datasets[0].StudyInstanceUID),
        str(datasets[0].PatientID),
        str(datasets[0].PatientName),
        str(datasets[0].PatientName).replace("^", " "),
    ]
    for log in root.rglob("*.log"):
        text = log.read_text(errors="replace")
        found = [i for i in identifiers if i in text]
        assert not found, f"{log.name} holds {found}"


def test_make_up_keeps_var_private_and_registers_the_local_sender(tmp_path, monkeypatch):
    require_orthanc()
    for key in launcher.DEFAULT_PORTS:
        monkeypatch.setenv(f"NEURORADIX_{key}", str(free_port()))
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    os.chmod(var, 0o755)
    try:
        config = launcher.up(var, timeout=120)
        env = launcher.read_env_file(var / "node.env")
        assert env["DICOM_CALLING_AET"] == config.calling_aet
        assert (env["DICOM_CALLING_AET"], "127.0.0.1") in {(s.aet, s.host) for s in config.senders}
        assert stat.S_IMODE(os.stat(var).st_mode) == 0o700
        assert _modes(var) == []
        secrets = launcher.read_env_file(var / "secrets.env")
        assert {"ORTHANC_SIDECAR_PASSWORD", "ORTHANC_VIEWER_PASSWORD", "UID_KEY"} <= set(secrets)
        assert {"SIDECAR_PLUGIN_TOKEN", "SIDECAR_READER_TOKEN"} <= set(secrets)
        assert env["SIDECAR_READER_TOKEN"] == secrets["SIDECAR_READER_TOKEN"]
        assert secrets["SIDECAR_PLUGIN_TOKEN"] not in env.values()

        def jobs(token: str) -> int:
            request = urllib.request.Request(
                env["SIDECAR_URL"] + "/v1/jobs", headers={"Authorization": f"Bearer {token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert [jobs(env["SIDECAR_READER_TOKEN"]), jobs(env["SIDECAR_TOKEN"])] == [200, 200]
        assert jobs(secrets["SIDECAR_PLUGIN_TOKEN"]) == 403
        echoscu = require_tool("echoscu")

        def echo(aet: str) -> int:
            return subprocess.run(
                [echoscu, "-aet", aet, "-aec", env["DICOM_AET"], "127.0.0.1", env["DICOM_PORT"]], capture_output=True
            ).returncode

        assert echo(env["DICOM_CALLING_AET"]) == 0 and echo("NEWSCANNER") != 0
        # `neuroradix senders add/remove` reaches the running node at once.
        cli = [sys.executable, "-m", "neuroradix.cli", "senders", "--var", str(var)]
        added = subprocess.run([*cli, "add", "NEWSCANNER", "127.0.0.1"], capture_output=True, text=True)
        assert "applied to the running node" in added.stdout, added.stderr
        assert echo("NEWSCANNER") == 0
        subprocess.run([*cli, "remove", "newscanner"], check=True, capture_output=True)
        assert echo("NEWSCANNER") != 0
    finally:
        launcher.down(var)
