"""Analysis without a PACS: `neuroradix analyze`, POST /v1/analyze through a worker, and what they refuse."""

from __future__ import annotations

import io
import json
import threading
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.encaps import encapsulate

from neuroradix.api.app import create_app
from neuroradix.cli import main
from neuroradix.config import Settings
from neuroradix.errors import BadInputError
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.jobs.ledger import Ledger
from neuroradix.jobs.worker import Worker
from neuroradix.pipeline.layout import job_results_dir, uploads_dir
from neuroradix.pipeline.sources import inspect_zip, read_zip
from neuroradix.samples.phantom import thorax_phantom

TOKEN = "test-token-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/zip"}


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory):
    volume, _ = thorax_phantom()
    out = tmp_path_factory.mktemp("ct")
    write_series(volume_to_ct_series(volume, uid_seed="standalone"), out)
    return out


def _zip(folder, extra=None):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in sorted(folder.iterdir()):
            archive.write(f, f"study/{f.name}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


class NoPacs:
    """An upload needs no PACS: any call would be a bug."""

    def ping(self):
        return None


def _settings(tmp_path, **extra):
    (tmp_path / "var").mkdir(exist_ok=True)
    return Settings(
        orthanc_url="http://127.0.0.1:1",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token=TOKEN,
        var_dir=tmp_path / "var",
        **extra,
    )


def test_cli_analyze_writes_objects_results_and_label_map(series_dir, tmp_path, capsys):
    assert main(["analyze", str(series_dir), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    document = json.loads((out / "results.json").read_text())
    assert document["analyzers"] == {"lung-hu": "stored"}
    modalities = sorted(pydicom.dcmread(p).Modality for p in (out / "lung-hu").glob("*.dcm"))
    assert modalities == sorted(["SEG", "SR", "OT", "DOC"])
    labels = nib.load(out / "lung-hu" / "labels.nii.gz")
    segments = {s["name"]: s for s in document["results"]["lung-hu"]["segments"]}
    data = np.asarray(labels.dataobj)
    assert int((data == 2).sum()) == segments["Left lung"]["voxels"] > 0
    # the NIfTI is RAS: the left lung (label 2) lies at larger x after flipping to LPS (x_lps = -x_ras)
    left = np.argwhere(data == 2).mean(axis=0)
    right = np.argwhere(data == 3).mean(axis=0)
    x_lps = lambda ijk: -(labels.affine @ np.r_[ijk, 1])[0]  # noqa: E731
    assert x_lps(left) > x_lps(right)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"lung-hu": "stored"}


def test_cli_analyze_reports_bad_input(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    assert main(["analyze", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    assert "not DICOM" in capsys.readouterr().err


def test_cli_weights_without_the_deep_analyzer_exits_2_naming_the_flag(series_dir, tmp_path, capsys):
    assert main(["analyze", str(series_dir), "--out", str(tmp_path / "out"), "--weights", str(tmp_path)]) == 2
    assert "--analyzers deep" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_cli_choices_come_from_the_registry_and_the_enum(series_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", str(series_dir), "--out", str(tmp_path / "o"), "--analyzers", "lung-hu,magic"])
    assert exit_info.value.code == 2 and "choose from lung-hu, deep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", str(series_dir), "--out", str(tmp_path / "o"), "--seg-type", "FRACTIONAL"])
    err = capsys.readouterr().err
    assert "invalid choice: 'FRACTIONAL'" in err and "'BINARY', 'LABELMAP'" in err  # SegType's members


def test_zip_safety_checks(series_dir, tmp_path):
    with pytest.raises(BadInputError, match="unsafe path"):
        read_zip(_zip(series_dir, {"../../etc/evil.dcm": b"x"}), 10**9)
    with pytest.raises(BadInputError, match="not DICOM files: 'readme.txt'"):
        read_zip(_zip(series_dir, {"readme.txt": b"hello"}), 10**9)
    with pytest.raises(BadInputError, match="more than the limit"):
        read_zip(_zip(series_dir), 1000)


def test_inspect_zip_reads_headers_and_wants_one_study(series_dir, tmp_path):
    good = tmp_path / "good.zip"
    good.write_bytes(_zip(series_dir))
    inventory = inspect_zip(good, 10**9)
    first = pydicom.dcmread(next(iter(sorted(series_dir.iterdir()))))
    assert inventory.study_uid == first.StudyInstanceUID and inventory.n_files == len(list(series_dir.iterdir()))
    other = first.copy()
    other.StudyInstanceUID = "1.2.826.0.1.3680043.99.1"
    buffer = io.BytesIO()
    other.save_as(buffer, enforce_file_format=True)
    two = tmp_path / "two.zip"
    two.write_bytes(_zip(series_dir, {"other/x.dcm": buffer.getvalue()}))
    with pytest.raises(BadInputError, match="exactly one study, found 2"):
        inspect_zip(two, 10**9)
    for name, data, reason in [
        ("bad.zip", b"not a zip", "not a zip"),
        ("evil.zip", _zip(series_dir, {"../x.dcm": b"x"}), "unsafe path"),
        ("text.zip", _zip(series_dir, {"notes.txt": b"hi"}), "not DICOM"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadInputError, match=reason):
            inspect_zip(tmp_path / name, 10**9)


def test_post_analyze_queues_a_job_that_a_worker_runs(series_dir, tmp_path):
    settings = _settings(tmp_path)
    ledger = Ledger(settings.resolved_ledger_url)
    app = create_app(settings, ledger, NoPacs(), run_reconciler=False)
    with TestClient(app) as client:
        r = client.post("/v1/analyze", content=_zip(series_dir), headers=HEADERS)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["state"] == "queued" and job["source"] == "upload" and job["trigger"] == "upload"
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        uploads = list(uploads_dir(settings.var_dir).iterdir())
        assert len(uploads) == 1 and uploads[0].suffix == ".zip"  # streamed to a file, not analyzed here
        assert client.get(f"/v1/jobs/{job['id']}/results.zip", headers=HEADERS).json()["job_state"] == "queued"

        worker = Worker(settings, ledger=ledger, pacs=NoPacs(), worker_id="w1")
        assert worker.run_once()
        done = client.get(f"/v1/jobs/{job['id']}", headers=HEADERS).json()
        assert done["state"] == "succeeded", done
        assert {"select", "fetch", "decode", "assemble", "analyze:lung-hu", "encode:lung-hu", "store"} <= set(
            done["timings"]
        )
        assert list(uploads_dir(settings.var_dir).iterdir()) == []  # the upload is gone once the job ended

        r = client.get(f"/v1/jobs/{job['id']}/results.zip", headers=HEADERS)
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(r.content))
        names = archive.namelist()
        assert "results.json" in names and "lung-hu/labels.nii.gz" in names
        dcms = [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in names if n.endswith(".dcm")]
        assert sorted(d.Modality for d in dcms) == sorted(["SEG", "SR", "OT", "DOC"])
        document = json.loads(archive.read("results.json"))
        assert document["study"]["StudyInstanceUID"] == job["study_uid"]
        assert {o["sop_instance_uid"] for o in document["outputs"]} == {d.SOPInstanceUID for d in dcms}
        assert (job_results_dir(settings.var_dir, job["id"]) / "results.json").is_file()

        # the same study uploaded again is a new job, apart from any PACS job of that study
        again = client.post("/v1/analyze", content=_zip(series_dir), headers=HEADERS).json()
        assert again["id"] != job["id"] and again["study_uid"] == job["study_uid"]
        assert client.get(f"/v1/studies/{job['study_uid']}/results.zip", headers=HEADERS).json()["job_state"] is None


def test_post_analyze_refuses_malformed_archives_with_the_reason(series_dir, tmp_path):
    settings = _settings(tmp_path)
    ledger = Ledger(settings.resolved_ledger_url)
    app = create_app(settings, ledger, NoPacs(), run_reconciler=False)
    with TestClient(app) as client:
        for body, reason in [
            (b"not a zip", "not a zip"),
            (_zip(series_dir, {"../x.dcm": b"x"}), "unsafe path"),
            (_zip(series_dir, {"readme.txt": b"x"}), "not DICOM"),
        ]:
            r = client.post("/v1/analyze", content=body, headers=HEADERS)
            assert r.status_code == 422 and reason in r.json()["detail"], r.text
        assert client.post("/v1/analyze", content=b"", headers=HEADERS).status_code == 400
    assert list(uploads_dir(settings.var_dir).iterdir()) == [] and ledger.list() == []
    small = _settings(tmp_path, max_upload_bytes=1000)
    with TestClient(create_app(small, ledger, NoPacs(), run_reconciler=False)) as client:
        assert client.post("/v1/analyze", content=_zip(series_dir), headers=HEADERS).status_code == 413
    assert list(uploads_dir(settings.var_dir).iterdir()) == []


def test_post_analyze_with_wait_returns_the_zip_the_worker_made(series_dir, tmp_path):
    """The README's one-call curl (`?wait=`): the API waits for a worker, then answers with the zip.

    Here the worker runs in a thread of the test; in the node it is a `neuroradix worker` process
    (tests/integration/test_node.py sends an upload to a running node).
    """
    settings = _settings(tmp_path)
    ledger = Ledger(settings.resolved_ledger_url)
    worker = Worker(settings, ledger=ledger, pacs=NoPacs(), worker_id="w-thread")
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            if not worker.run_once():
                stop.wait(0.1)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        with TestClient(create_app(settings, ledger, NoPacs(), run_reconciler=False)) as client:
            r = client.post("/v1/analyze", params={"wait": 600}, content=_zip(series_dir), headers=HEADERS)
            assert r.status_code == 200, r.text
            names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
            assert "results.json" in names and "lung-hu/labels.nii.gz" in names
            assert len([n for n in names if n.endswith(".dcm")]) == 4
            # a failing upload (a study of 4 slices) answers 422 with the job's reason
            few = tmp_path / "few"
            few.mkdir()
            for f in sorted(series_dir.iterdir())[:4]:
                (few / f.name).write_bytes(f.read_bytes())
            r = client.post("/v1/analyze", params={"wait": 600}, content=_zip(few), headers=HEADERS)
            assert r.status_code == 422 and r.json()["job"]["state"] == "skipped", r.text
            assert "fewer than 10" in r.json()["detail"]
    finally:
        stop.set()
        thread.join(60)


def test_undecodable_local_pixels_fail_with_the_typed_error(series_dir, tmp_path, capsys):
    """A local study cannot be transcoded: the typed error reaches the user, naming the syntax."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in sorted(series_dir.iterdir()):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 ...
        ds.PixelData = encapsulate([b"\x00" * 64])  # ... whose one frame is not a JPEG 2000 codestream
        ds.save_as(bad / f.name)
    assert main(["analyze", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "UndecodablePixelsError" in err and "JPEG 2000" in err
