"""The real chest CT as Enhanced CT gives what the classic slices give, through ``neuroradix analyze``.

The done-when of the Enhanced CT work, offline: the tool writes the scan both ways (two studies), and
the lung volumes agree within 2 % (they are in fact equal) with the same kinds of result objects.
"""

from __future__ import annotations

import json

import pydicom
import pytest

from neuroradix import cli
from neuroradix.imaging.frames import ENHANCED_CT_IMAGE_STORAGE
from neuroradix.samples import enhanced_ct
from neuroradix.samples.real_ct import THORAX
from tests.support import real_ct


def _measurements(out) -> dict[str, float]:
    document = json.loads((out / "results.json").read_text())
    return {m["name"]: m["value"] for m in document["results"]["lung-hu"]["measurements"]}


def _kinds(out) -> list[tuple[str, str]]:
    return [(str(ds.Modality), str(ds.SOPClassUID)) for ds in map(pydicom.dcmread, sorted(out.glob("lung-hu/*.dcm")))]


def test_enhanced_real_chest_ct_gives_the_classic_lung_volumes(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORADIX_SHARED_DIR", str(real_ct(THORAX).parents[2]))  # where the tool finds the scan
    assert enhanced_ct.main([str(tmp_path), "--shuffle", "3"]) == 0
    enhanced = pydicom.dcmread(tmp_path / "enhanced" / enhanced_ct.ENHANCED_FILE, stop_before_pixels=True)
    assert enhanced.SOPClassUID == ENHANCED_CT_IMAGE_STORAGE
    assert int(enhanced.NumberOfFrames) == len(list((tmp_path / "classic").iterdir())) > 100
    assert cli.main(["analyze", str(tmp_path / "classic"), "--out", str(tmp_path / "out-classic")]) == 0
    assert cli.main(["analyze", str(tmp_path / "enhanced"), "--out", str(tmp_path / "out-enhanced")]) == 0
    classic, got = _measurements(tmp_path / "out-classic"), _measurements(tmp_path / "out-enhanced")
    volumes = [name for name in classic if name in ("Left lung volume", "Right lung volume")]
    assert len(volumes) == 2 and all(classic[name] > 500 for name in volumes)
    for name in volumes:
        assert got[name] == pytest.approx(classic[name], rel=0.02), name
    assert got.keys() == classic.keys()
    assert _kinds(tmp_path / "out-enhanced") == _kinds(tmp_path / "out-classic")
    seg = next(
        ds for ds in map(pydicom.dcmread, (tmp_path / "out-enhanced").glob("lung-hu/*.dcm")) if ds.Modality == "SEG"
    )
    references = {
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert references == {enhanced.SOPInstanceUID}
