"""Results of an Enhanced CT source: every SEG / Parametric Map frame references its own source frame.

The source is the writers' test series turned into one Enhanced CT instance with its frames stored
shuffled (and into two instances), so a frame number that followed the slice order instead of the
source's frame order would point at the wrong plane.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from neuroradix.config import PmapGrid, SegType
from neuroradix.imaging.enhanced import classic_to_enhanced_ct
from neuroradix.types import Volume
from neuroradix.writers.common import OutputContext
from neuroradix.writers.pmap import build_pmaps
from neuroradix.writers.seg import build_seg
from neuroradix.writers.sr import build_sr
from tests.writers.writer_fixtures import N_COLS, N_ROWS, N_SLICES, ct_affine, dciodvfy, make_ct_series

SHUFFLED = np.random.default_rng(5).permutation(N_SLICES)


def _sources(layout: str) -> list:
    classic = make_ct_series()
    if layout == "one-instance":
        return [classic_to_enhanced_ct(classic, frame_order=SHUFFLED, uid_seed="w")]
    half = N_SLICES // 2
    first = classic_to_enhanced_ct(classic[:half], frame_order=SHUFFLED[SHUFFLED < half], uid_seed="w1")
    second = classic_to_enhanced_ct(classic[half:], uid_seed="w2")
    second.SeriesInstanceUID = first.SeriesInstanceUID
    return [first, second]


def _ctx(sources, **changes) -> OutputContext:
    hu = np.full((N_SLICES, N_ROWS, N_COLS), -850, np.float32)
    ctx = OutputContext(source=sources, volume=Volume(hu, ct_affine()), pipeline_version="p1", software_version="0.1.0")
    return replace(ctx, **changes) if changes else ctx


def _frame_position(sources, sop_uid: str, frame: int) -> np.ndarray:
    source = next(s for s in sources if s.SOPInstanceUID == sop_uid)
    item = source.PerFrameFunctionalGroupsSequence[frame - 1]
    return np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])


def _check_references(ds, sources) -> int:
    """Every frame's source reference lies at the frame's own position; returns the frames checked."""
    for item in ds.PerFrameFunctionalGroupsSequence:
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        at = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        np.testing.assert_allclose(
            _frame_position(sources, reference.ReferencedSOPInstanceUID, int(reference.ReferencedFrameNumber)),
            at,
            atol=1e-3,
        )
    listed = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert listed == {s.SOPInstanceUID for s in sources}
    return len(ds.PerFrameFunctionalGroupsSequence)


def test_context_maps_each_slice_to_its_frame():
    sources = _sources("one-instance")
    ctx = _ctx(sources)
    assert [frame for _, frame in ctx.slice_frames] == [
        int(np.flatnonzero(SHUFFLED == k)[0]) + 1 for k in range(N_SLICES)
    ]
    marked = np.arange(N_SLICES)
    assert list(ctx.in_frame_order(marked)) == list(SHUFFLED)  # item f is the slice of frame f + 1
    moved = sources[0].PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    moved.ImagePositionPatient = [float(v) + 40.0 for v in moved.ImagePositionPatient]
    with pytest.raises(ValueError, match="frame 1 is at no free slice"):
        _ctx(sources)


@pytest.mark.parametrize("layout", ["one-instance", "two-instances"])
@pytest.mark.parametrize("seg_type", [SegType.BINARY, SegType.LABELMAP])
def test_seg_frames_reference_their_source_frames(layout, seg_type, result, roundtrip):
    sources = _sources(layout)
    seg = build_seg(result, _ctx(sources, seg_type=seg_type))
    back, path = roundtrip(seg)
    assert _check_references(back, sources) > 0
    if seg_type is SegType.BINARY:  # Debian 12's dciodvfy predates the Label Map SEG class
        errors, _ = dciodvfy(path)
        assert errors == []


@pytest.mark.parametrize("layout", ["one-instance", "two-instances"])
def test_pmap_on_the_source_grid_references_its_source_frames(layout, result, roundtrip):
    sources = _sources(layout)
    pmap = build_pmaps(result, _ctx(sources, pmap_grid=PmapGrid.SOURCE))[0]
    back, path = roundtrip(pmap)
    assert _check_references(back, sources) == N_SLICES
    errors, _ = dciodvfy(path)
    assert errors == []


def test_sr_lists_the_multiframe_source_as_evidence(result, roundtrip):
    sources = _sources("two-instances")
    ctx = _ctx(sources)
    seg = build_seg(result, ctx)
    sr = build_sr(result, ctx, seg, [])
    back, path = roundtrip(sr)
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in back.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert {s.SOPInstanceUID for s in sources} | {seg.SOPInstanceUID} <= evidence
    errors, _ = dciodvfy(path)
    assert errors == []
