"""Size limits decided from metadata: before any instance is fetched (WADO-RS) or any pixel decoded."""

from __future__ import annotations

import numpy as np
import pytest

from neuroradix.config import PipelineSettings
from neuroradix.errors import BadInputError, InputTooLargeError, NotEligibleError
from neuroradix.imaging.enhanced import classic_to_enhanced_ct
from neuroradix.imaging.volume import SizeLimits
from neuroradix.pacs.series import candidate_uids, load_rules, select_series
from neuroradix.pacs.summaries import InstanceSummary, SeriesSummary
from neuroradix.pipeline.run import process_study
from neuroradix.pipeline.sources import LocalSource
from tests.factory import ct_series

RULES = load_rules()
OWN = "Neuro Radix"


def _vol(n, rows=8, cols=8):
    return np.zeros((n, rows, cols), np.float32)


class CountingSource(LocalSource):
    """A local study that records what the pipeline asked for (as a PACS would see it)."""

    def __init__(self, datasets, counts=None):
        super().__init__(datasets)
        self.metadata_asked, self.fetched = [], []
        self.counts = counts or {}

    def series(self):
        return [
            SeriesSummary(
                s.series_uid,
                s.modality,
                s.series_number,
                s.description,
                s.manufacturer,
                self.counts.get(s.series_uid, s.n_instances),
            )
            for s in super().series()
        ]

    def instances(self, series_uid):
        self.metadata_asked.append(series_uid)
        return super().instances(series_uid)

    def datasets(self, series_uid, *, transcode=False):
        self.fetched.append(series_uid)
        return super().datasets(series_uid, transcode=transcode)


def test_too_many_voxels_fails_from_metadata_without_fetching():
    series = ct_series(_vol(30, 16, 16))
    source = CountingSource(series)
    settings = PipelineSettings(max_volume_voxels=30 * 16 * 16 - 1)
    with pytest.raises(InputTooLargeError, match=r"30 x 16 x 16 = 7,680 voxels.*NEURORADIX_MAX_VOLUME_VOXELS"):
        process_study(source, [], settings, [])
    assert source.metadata_asked == [str(series[0].SeriesInstanceUID)]
    assert source.fetched == []  # decided before any WADO-RS fetch


def test_absurd_qido_count_is_refused_before_even_the_metadata():
    series = ct_series(_vol(20))
    uid = str(series[0].SeriesInstanceUID)
    source = CountingSource(series, counts={uid: 5000})  # the PACS says 5000 instances
    with pytest.raises(
        InputTooLargeError, match="5000 instances, above the limit of 2000.*NEURORADIX_MAX_SERIES_INSTANCES"
    ):
        process_study(source, [], PipelineSettings(), [])
    assert source.metadata_asked == [] and source.fetched == []


def test_absurd_rows_and_frames_in_metadata_fail_with_numbers():
    rows = ct_series(_vol(20))
    for ds in rows:
        ds.Rows = 65535
    with pytest.raises(InputTooLargeError, match="65535 x 8.*NEURORADIX_MAX_IMAGE_SIDE"):
        process_study(CountingSource(rows), [], PipelineSettings(), [])
    frames = ct_series(_vol(20))
    frames[0].NumberOfFrames = 2**31 - 1
    source = CountingSource(frames)
    with pytest.raises(BadInputError, match="2147483647 frames"):
        process_study(source, [], PipelineSettings(), [])
    assert source.fetched == []


def test_a_smaller_series_is_used_when_the_larger_is_over_a_limit():
    study = "1.2.3.4"
    thin = ct_series(_vol(60, 16, 16), slice_spacing=0.5, study_uid=study, series_number=2)
    thick = ct_series(_vol(20, 16, 16), slice_spacing=2.0, study_uid=study, series_number=3)
    series = [SeriesSummary.from_dataset(s[0]) for s in (thin, thick)]
    series = [
        SeriesSummary(s.series_uid, s.modality, s.series_number, s.description, s.manufacturer, n)
        for s, n in zip(series, (60, 20))
    ]
    metadata = {str(s[0].SeriesInstanceUID): [InstanceSummary.from_dataset(ds) for ds in s] for s in (thin, thick)}
    limits = SizeLimits(max_voxels=40 * 16 * 16)
    assert select_series(series, metadata, RULES, OWN).series_uid == thin[0].SeriesInstanceUID  # no limits: most slices
    assert select_series(series, metadata, RULES, OWN, limits).series_uid == thick[0].SeriesInstanceUID
    by_count = SizeLimits(max_instances=40)
    assert candidate_uids(series, RULES, OWN, by_count) == [
        str(thick[0].SeriesInstanceUID)
    ]  # thin: no metadata fetched
    with pytest.raises(InputTooLargeError) as err:
        select_series(series[:1], metadata, RULES, OWN, limits)
    assert "series 2 (CT)" in str(err.value) and "60 x 16 x 16" in str(err.value)


def test_a_study_without_ct_stays_not_eligible_with_limits():
    mr = ct_series(_vol(20), modality="MR")
    with pytest.raises(NotEligibleError):
        process_study(CountingSource(mr), [], PipelineSettings(max_volume_voxels=10), [])


def test_summaries_carry_bits_and_frames_from_dicom_json():
    ds = ct_series(_vol(12))[0]
    ds.NumberOfFrames = 3
    summary = InstanceSummary.from_json(ds.to_json_dict())
    assert (summary.rows, summary.columns, summary.bits_allocated, summary.number_of_frames) == (8, 8, 16, 3)
    assert InstanceSummary.from_dataset(ct_series(_vol(12))[0]).number_of_frames is None


def test_enhanced_ct_frames_count_against_the_limits_before_the_fetch():
    """NumberOfFrames x Rows x Columns from the metadata: an Enhanced CT over a limit is never fetched."""
    enhanced = [classic_to_enhanced_ct(ct_series(_vol(30, 16, 16)))]
    source = CountingSource(enhanced)  # the PACS counts 1 instance
    with pytest.raises(InputTooLargeError, match=r"30 x 16 x 16 = 7,680 voxels.*NEURORADIX_MAX_VOLUME_VOXELS"):
        process_study(source, [], PipelineSettings(max_volume_voxels=30 * 16 * 16 - 1), [])
    assert source.metadata_asked == [str(enhanced[0].SeriesInstanceUID)] and source.fetched == []
    source = CountingSource(enhanced)
    with pytest.raises(
        InputTooLargeError, match="30 frames in 1 multi-frame instance.*NEURORADIX_MAX_SERIES_INSTANCES"
    ):
        process_study(source, [], PipelineSettings(max_series_instances=29), [])
    assert source.fetched == []
