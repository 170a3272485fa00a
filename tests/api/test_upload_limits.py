"""``POST /v1/analyze`` limits: concurrent uploads, zip bombs, and a 422 naming the reason for every malformed archive.

The bad archives are made here from a good one with :mod:`zipfile` and byte patching, as a broken
client, a damaged disk or a hostile sender would make them.
"""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from neuroradix.api.analyze import UploadSlots
from neuroradix.api.app import create_app
from neuroradix.errors import BadInputError, InputTooLargeError
from neuroradix.jobs.ledger import Ledger
from neuroradix.pipeline.sources import inspect_zip, read_zip
from tests.api.test_api import TOKEN, LivePacs, _settings
from tests.factory import ct_series

HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/zip"}


@pytest.fixture()
def make_client(tmp_path):
    clients = []

    def make(**extra):
        settings = _settings(tmp_path, **extra)
        client = TestClient(
            create_app(settings, Ledger(settings.resolved_ledger_url), LivePacs(), run_reconciler=False)
        )
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _dicom_files(n=12, side=16, seed=0):
    rng = np.random.default_rng(seed)
    volume = rng.integers(-1000, 1000, size=(n, side, side)).astype(np.float32)
    out = []
    for ds in ct_series(volume, study_uid="1.2.826.0.1.3680043.8.498.77"):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append((f"CT{int(ds.InstanceNumber):04d}.dcm", buffer.getvalue()))
    return out


def _zip(files, method=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


GOOD = _zip(_dicom_files())


def _central_entries(data):
    """Offsets of the central directory headers (signature PK\\x01\\x02) and of the local headers they point to."""
    entries, at = [], data.find(b"PK\x01\x02")
    while at >= 0:
        (local,) = struct.unpack_from("<I", data, at + 42)
        entries.append((at, local))
        at = data.find(b"PK\x01\x02", at + 4)
    return entries


def _patched(data, patch):
    out = bytearray(data)
    patch(out)
    return bytes(out)


def _encrypted(data):
    def patch(out):
        central, local = _central_entries(data)[0]
        out[central + 8] |= 0x01  # general purpose flag bit 0: encrypted
        out[local + 6] |= 0x01

    return _patched(data, patch)


def _unknown_method(data):
    def patch(out):
        central, local = _central_entries(data)[0]
        struct.pack_into("<H", out, central + 10, 98)  # PPMd: no Python reads it
        struct.pack_into("<H", out, local + 8, 98)

    return _patched(data, patch)


def _bad_crc(data):
    def patch(out):
        _, local = _central_entries(data)[2]
        name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
        (size,) = struct.unpack_from("<I", data, local + 22)
        last = local + 30 + name_len + extra_len + size - 1  # the last pixel byte of a stored member
        out[last] ^= 0xFF

    return _patched(data, patch)


def _damaged_deflate(data):
    def patch(out):
        _, local = _central_entries(data)[1]
        name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
        start = local + 30 + name_len + extra_len
        out[start : start + 64] = bytes(64)  # the deflate stream's first blocks overwritten

    return _patched(data, patch)


MALFORMED = [
    ("bad CRC", _bad_crc(GOOD), "corrupt or truncated.*CRC"),
    ("damaged deflate data", _damaged_deflate(_zip(_dicom_files(), zipfile.ZIP_DEFLATED)), "corrupt or truncated"),
    ("encrypted member", _encrypted(GOOD), "is encrypted"),
    ("unknown compression method", _unknown_method(GOOD), "compression method 98"),
    ("truncated", GOOD[: len(GOOD) // 2], "truncated or damaged"),
    ("not a zip", b"%PDF-1.4 this is not a zip archive at all" * 10, "not a zip archive"),
    ("empty zip", _zip([]), "zip archive is empty"),
    ("not DICOM inside", _zip([("notes.txt", b"hello" * 100)]), "not DICOM"),
    ("a zip inside the zip", _zip(_dicom_files()[:3] + [("inner.zip", _zip(_dicom_files()[:2]))]), "not DICOM.*inner"),
]


@pytest.mark.parametrize("name,body,reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_archive_answers_422_naming_the_reason(make_client, tmp_path, name, body, reason):
    client = make_client()
    r = client.post("/v1/analyze", content=body, headers=HEADERS)
    assert r.status_code == 422, (name, r.status_code, r.text)
    assert "BadInputError" in r.json()["detail"]
    assert re.search(reason, r.json()["detail"]), (name, r.json()["detail"])
    assert not list((tmp_path / "uploads").glob("*")), "a refused upload must not stay on disk"


@pytest.mark.parametrize("name,body,reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_read_zip_raises_bad_input_for_every_malformed_archive(tmp_path, name, body, reason):
    path = tmp_path / "study.zip"
    path.write_bytes(body)
    with pytest.raises(BadInputError, match=reason):
        read_zip(path, 10**9)
    with pytest.raises(BadInputError, match=reason):
        read_zip(body, 10**9)


def test_good_zip_is_accepted_and_queued(make_client):
    r = make_client().post("/v1/analyze", content=GOOD, headers=HEADERS)
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "queued"


def test_zip_bomb_member_ratio_is_refused_before_expanding(make_client, tmp_path):
    bomb = _zip(_dicom_files()[:2] + [("pad.dcm", bytes(64 * 1024**2))], zipfile.ZIP_DEFLATED)
    assert len(bomb) < 1024**2  # 64 MiB of zeros in ~64 KiB
    r = make_client().post("/v1/analyze", content=bomb, headers=HEADERS)
    assert r.status_code == 413, r.text
    assert "InputTooLargeError" in r.json()["detail"] and "NEURORADIX_MAX_ZIP_MEMBER_RATIO" in r.json()["detail"]
    with pytest.raises(InputTooLargeError, match="pad.dcm"):
        inspect_zip(io.BytesIO(bomb), 10**12, max_ratio=200)
    inspect_zip(io.BytesIO(_zip(_dicom_files(), zipfile.ZIP_DEFLATED)), 10**12, max_ratio=200)  # small members pass


def test_total_uncompressed_size_is_limited_by_its_setting(make_client):
    r = make_client(max_upload_expanded_bytes=len(GOOD) // 2).post("/v1/analyze", content=GOOD, headers=HEADERS)
    assert r.status_code == 413, r.text
    assert "NEURORADIX_MAX_UPLOAD_EXPANDED_BYTES" in r.json()["detail"]


def test_upload_body_over_the_limit_is_413(make_client):
    r = make_client(max_upload_bytes=1000).post("/v1/analyze", content=GOOD, headers=HEADERS)
    assert r.status_code == 413


def test_uploads_beyond_the_concurrency_cap_get_429_with_retry_after(make_client):
    client = make_client(max_concurrent_uploads=1)
    slots = UploadSlots(1)
    client.app.state.upload_slots = slots
    slots.take()  # one upload is being received
    r = client.post("/v1/analyze", content=GOOD, headers=HEADERS)
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) > 0 and "max_concurrent_uploads" in r.json()["detail"]
    slots.give_back()
    assert client.post("/v1/analyze", content=b"not a zip", headers=HEADERS).status_code == 422
    assert client.post("/v1/analyze", content=GOOD, headers=HEADERS).status_code == 202  # failures freed their slot
    assert slots.busy == 0


def test_the_upload_is_not_held_in_memory_by_the_api(make_client):
    body = _zip(_dicom_files(n=40, side=256, seed=1))  # ~5 MB, stored
    client = make_client()
    client.post("/v1/analyze", content=GOOD, headers=HEADERS)  # warm up imports and the ledger
    tracemalloc.start()
    try:
        r = client.post("/v1/analyze", content=body, headers=HEADERS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 202, r.text
    # The test client hands the body over as one chunk (no copy); the API streams it to a file and
    # reads headers back: a second copy of the upload anywhere would take the peak past its size.
    assert peak < 0.5 * len(body), f"peak {peak:,} bytes for an upload of {len(body):,}"
