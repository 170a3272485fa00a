"""Shared behaviour: deterministic UIDs, untrained marking, ASCII text, encode order."""

import io
from dataclasses import replace

import numpy as np
import pypdf
import pytest

from neuroradix.config import PipelineSettings, PmapGrid, SegType
from neuroradix.errors import BadInputError
from neuroradix.writers.common import UNTRAINED_MARK, OutputContext, ascii_text, series_description
from neuroradix.writers.encode import encode_result
from tests.writers.writer_fixtures import dciodvfy


def _uids(objects):
    return [(d.SeriesInstanceUID, d.SOPInstanceUID) for d in objects]


def test_encode_order_and_references(result, ctx):
    objects = encode_result(result, ctx)
    assert [d.Modality for d in objects] == ["SEG", "OT", "SR", "DOC"]
    seg, pmap, sr, pdf = objects
    assert pmap.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert sr.Modality == "SR" and pdf.Modality == "DOC"
    assert {d.StudyInstanceUID for d in objects} == {ctx.study_uid}
    assert len({d.SeriesInstanceUID for d in objects}) == 4
    assert [d.SeriesNumber for d in objects] == [9001, 9010, 9002, 9003]
    assert {r.ReferencedSOPInstanceUID for r in pdf.SourceInstanceSequence} >= {seg.SOPInstanceUID, sr.SOPInstanceUID}


def test_uids_are_deterministic(result, ctx):
    first, again = encode_result(result, ctx), encode_result(result, ctx)
    assert _uids(first) == _uids(again)
    other = encode_result(result, replace(ctx, pipeline_version="p2"))
    assert not set(_uids(first)) & set(_uids(other))
    assert all(uid.startswith("2.25.") and len(uid) <= 64 for pair in _uids(first) for uid in pair)


def test_empty_label_map_skips_seg(result, ctx):
    objects = encode_result(replace(result, labels=np.zeros_like(result.labels)), ctx)
    assert [d.Modality for d in objects][-2:] == ["SR", "DOC"]
    assert all(d.SOPClassUID != "1.2.840.10008.5.1.4.1.1.66.4" for d in objects)


def test_untrained_marks_every_object(untrained_result, ctx):
    objects = encode_result(untrained_result, ctx)
    for ds in objects:
        assert ds.SeriesDescription.startswith(UNTRAINED_MARK)
    seg, _, sr, pdf = objects
    texts = []
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        stack.extend(item.get("ContentSequence", []))
        if item.ValueType == "TEXT":
            texts.append(item.TextValue)
    assert any(UNTRAINED_MARK in t for t in texts)
    assert all(UNTRAINED_MARK in s.SegmentDescription for s in seg.SegmentSequence)
    assert UNTRAINED_MARK in pdf.DocumentTitle
    reader = pypdf.PdfReader(io.BytesIO(bytes(pdf.EncapsulatedDocument)))
    assert all(UNTRAINED_MARK in page.extract_text() for page in reader.pages)


def test_every_object_passes_dciodvfy(result, ctx, roundtrip):
    for i, ds in enumerate(encode_result(result, ctx)):
        _, path = roundtrip(ds, f"obj{i}.dcm")
        errors, _ = dciodvfy(path)
        assert errors == [], ds.Modality


def test_generated_text_is_ascii(untrained_result, ctx):
    result = replace(untrained_result, report_text="Emphysema \u2014 severe, 5\u00b3 mm")
    for ds in encode_result(result, ctx):
        for elem in ds.iterall():
            if elem.VR in ("LO", "SH", "ST", "LT", "UT", "CS") and isinstance(elem.value, str):
                assert elem.value.isascii(), elem
    assert ascii_text("a \u2014 b\u00e9") == "a - be"


def test_series_description_keeps_mark_within_64(untrained_result):
    text = series_description(untrained_result, "attention map " + "x" * 80)
    assert len(text) == 64 and text.startswith(UNTRAINED_MARK)


def test_context_is_validated(ctx):
    with pytest.raises(ValueError, match="slices"):
        OutputContext(source=ctx.source[:-1], volume=ctx.volume, pipeline_version="p", software_version="s")
    with pytest.raises(ValueError, match="pipeline_version"):
        replace(ctx, pipeline_version="")
    with pytest.raises(TypeError, match="pmap_grid"):
        replace(ctx, pmap_grid="SOURCE")  # writers take the enum, not its value
    with pytest.raises(ValueError, match="not at slice"):
        replace(ctx, source=list(reversed(ctx.source)))
    mixed = list(ctx.source)
    mixed[3] = mixed[3].copy()
    mixed[3].SeriesInstanceUID = "1.2.3"
    with pytest.raises(BadInputError, match="mixes"):
        replace(ctx, source=mixed)


def test_context_defaults_are_the_settings_defaults(ctx):
    """One default per setting: a context built without them encodes what the node is configured to."""
    bare = OutputContext(source=ctx.source, volume=ctx.volume, pipeline_version="p", software_version="s")
    settings = PipelineSettings()
    assert bare.seg_type is settings.seg_type is SegType.BINARY
    assert bare.pmap_grid is settings.pmap_grid is PmapGrid.SOURCE
