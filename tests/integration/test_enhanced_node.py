"""The real chest CT sent with storescu as one Enhanced CT instance: the node gives what it gives the classic slices.

The done-when of the Enhanced CT work, through Orthanc: the same scan as classic single-frame slices
(one study) and as one Enhanced CT instance with its frames stored shuffled (another study), each sent
to the DICOM port; the lung volumes agree within 2 %, the same kinds of result objects are stored, and
the SEG read back over WADO-RS references the Enhanced CT's frames.
"""

from __future__ import annotations

import io
import json
import zipfile

import pydicom
import pytest

from neuroradix.imaging.ctseries import write_series
from neuroradix.samples.enhanced_ct import enhanced_sample
from neuroradix.samples.real_ct import even_in_plane

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _results(node, study_uid: str) -> tuple[dict[str, float], list[tuple[str, str]], list[pydicom.Dataset]]:
    data = node.api("GET", f"/v1/studies/{study_uid}/results.zip", raw=True)
    archive = zipfile.ZipFile(io.BytesIO(data))
    document = json.loads(archive.read("results.json"))
    values = {m["name"]: m["value"] for m in document["results"]["lung-hu"]["measurements"]}
    objects = [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in sorted(archive.namelist()) if n.endswith(".dcm")]
    return values, sorted((str(d.Modality), str(d.SOPClassUID)) for d in objects), objects


def test_enhanced_real_chest_ct_by_storescu_gives_the_classic_results(node, thorax_volume, tmp_path):
    sample = enhanced_sample(even_in_plane(thorax_volume), shuffle=5, uid_seed="it-enhanced")
    classic_files = write_series(sample.classic, tmp_path / "classic")
    enhanced_file = tmp_path / "enhanced" / "CT-enhanced.dcm"
    enhanced_file.parent.mkdir()
    sample.enhanced.save_as(enhanced_file, enforce_file_format=True)
    node.storescu(classic_files)
    node.storescu([enhanced_file])
    classic_uid, enhanced_uid = str(sample.classic[0].StudyInstanceUID), str(sample.enhanced.StudyInstanceUID)
    assert node.wait_job(classic_uid, timeout=600, states=("succeeded", "failed", "skipped"))["state"] == "succeeded"
    job = node.wait_job(enhanced_uid, timeout=600, states=("succeeded", "failed", "skipped"))
    assert job["state"] == "succeeded", job.get("error_message")
    classic, classic_kinds, _ = _results(node, classic_uid)
    got, kinds, objects = _results(node, enhanced_uid)
    for name in ("Left lung volume", "Right lung volume"):
        assert classic[name] > 500 and got[name] == pytest.approx(classic[name], rel=0.02), name
    assert kinds == classic_kinds
    seg = next(d for d in objects if d.Modality == "SEG")
    references = {
        (
            item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID,
            int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber),
        )
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert {uid for uid, _ in references} == {sample.enhanced.SOPInstanceUID}
    assert all(1 <= frame <= int(sample.enhanced.NumberOfFrames) for _, frame in references)
