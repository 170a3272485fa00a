"""Analysis without a PACS: `neuroradix analyze` and POST /v1/analyze, and what they refuse."""
from __future__ import annotations

import io
import json
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from neuroradix.api.app import create_app
from neuroradix.cli import main
from neuroradix.config import Settings
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.jobs.ledger import Ledger
from neuroradix.offline import read_zip
from neuroradix.samples.phantom import thorax_phantom

TOKEN = "test-token-0123456789abcdef"


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


def test_cli_analyze_reports_bad_input(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    assert main(["analyze", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    assert "not DICOM" in capsys.readouterr().err


def test_zip_safety_checks(series_dir):
    with pytest.raises(Exception, match="unsafe path"):
        read_zip(_zip(series_dir, {"../../etc/evil.dcm": b"x"}), 10**9)
    with pytest.raises(Exception, match="not DICOM files: 'readme.txt'"):
        read_zip(_zip(series_dir, {"readme.txt": b"hello"}), 10**9)
    with pytest.raises(Exception, match="more than the limit"):
        read_zip(_zip(series_dir), 1000)


def test_post_analyze_returns_the_results_zip(series_dir, tmp_path):
    settings = Settings(orthanc_url="http://127.0.0.1:1", orthanc_user="u", orthanc_password="p",
                        sidecar_token=TOKEN, var_dir=tmp_path)

    class Pacs:
        def ping(self):
            return None

    app = create_app(settings, Ledger(settings.resolved_ledger_url), Pacs(), run_reconciler=False)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/zip"}
    with TestClient(app) as client:
        r = client.post("/v1/analyze", content=_zip(series_dir), headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
        assert "results.json" in names and "lung-hu/labels.nii.gz" in names and len([n for n in names if n.endswith(".dcm")]) == 4
        bad = client.post("/v1/analyze", content=_zip(series_dir, {"../x.dcm": b"x"}), headers=headers)
        assert bad.status_code == 422 and "unsafe path" in bad.json()["detail"]
