"""The corpus's 800-slice thin-slice chest CT, at the level of series selection and volume planning.

Pushing 800 slices of 512x512 (420 MB) through Orthanc does not belong in CI: here the metadata of
such a series (what QIDO/WADO-RS metadata and the headers say) must be accepted with the default
settings, by the series rules, the size limits and the geometry plan. ``scripts/bench_thin_slice.py``
measures the real run (memory and time, the full pipeline).
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from neuroradix import MANUFACTURER
from neuroradix.config import PipelineSettings
from neuroradix.errors import InputTooLargeError
from neuroradix.imaging.volume import plan
from neuroradix.pacs.series import load_rules, select_series
from neuroradix.pacs.summaries import InstanceSummary, SeriesSummary
from neuroradix.pipeline.run import size_limits

SLICES, SIDE, STEP = 800, 512, 0.625  # a 0.625 mm reconstruction of a 500 mm chest


def _headers(n: int = SLICES, side: int = SIDE) -> list[Dataset]:
    """Header-only instances of one thin-slice series (no PixelData), slices in reverse order."""
    out = []
    for k in reversed(range(n)):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"1.2.3.4.{k + 1}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 4, "Thorax 0.625mm"
        ds.Manufacturer, ds.InstanceNumber = "Corpus Scanner", k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-175.0, -175.0, -250.0 + k * STEP]
        ds.PixelSpacing = [0.68, 0.68]
        ds.Rows = ds.Columns = side
        ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 0
        out.append(ds)
    return out


def _select(headers: list[Dataset], settings: PipelineSettings):
    series = [SeriesSummary("1.2.3.4", "CT", 4, "Thorax 0.625mm", "Corpus Scanner", len(headers))]
    instances = {"1.2.3.4": [InstanceSummary.from_dataset(ds) for ds in headers]}
    return select_series(series, instances, load_rules(), MANUFACTURER, size_limits(settings))


def test_800_slices_of_512_are_selected_and_planned_not_refused():
    settings = PipelineSettings()
    headers = _headers()
    chosen = _select(headers, settings)
    assert chosen.n_slices == SLICES and chosen.slice_spacing == pytest.approx(STEP)
    layout = plan(headers, size=size_limits(settings))  # headers only: nothing is decoded
    assert layout.shape == (SLICES, SIDE, SIDE) and layout.warnings == ()
    assert [int(ds.InstanceNumber) for ds in layout.datasets[:3]] == [1, 2, 3]  # sorted by position
    np.testing.assert_allclose(layout.affine[:3, 0], [0, 0, STEP])


def test_a_series_above_the_voxel_limit_fails_naming_the_setting():
    settings = PipelineSettings(max_volume_voxels=SLICES * SIDE * SIDE - 1)
    with pytest.raises(InputTooLargeError, match="NEURORADIX_MAX_VOLUME_VOXELS"):
        _select(_headers(), settings)
