"""SR writer: findings, measurements, text and references read back from the file."""

from dataclasses import replace

import highdicom as hd
import pytest

from neuroradix.analyzers.densitometry import Densitometry, DensityStats, density_measurements, lung_codes
from neuroradix.writers.pmap import build_pmaps
from neuroradix.writers.seg import build_seg, segment_number_for_label
from neuroradix.writers.sr import build_sr
from tests.writers.writer_fixtures import dciodvfy


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _name(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def _groups(ds):
    return [
        item
        for item in _walk(ds.ContentSequence)
        if item.ValueType == "CONTAINER" and _name(item) == "Measurement Group"
    ]


def _group_of(ds, finding_name):
    for group in _groups(ds):
        for item in group.ContentSequence:
            if _name(item) == "Tracking Identifier" and item.TextValue == f"finding {finding_name}":
                return group
    raise AssertionError(f"no group for {finding_name}")


def _nums(group):
    return {
        _name(i): float(i.MeasuredValueSequence[0].NumericValue) for i in group.ContentSequence if i.ValueType == "NUM"
    }


@pytest.fixture
def objects(result, ctx):
    seg = build_seg(result, ctx)
    pmaps = build_pmaps(result, ctx)
    return seg, pmaps, build_sr(result, ctx, seg, pmaps)


def test_findings_round_trip(result, objects, roundtrip):
    _seg, _pmaps, sr = objects
    back, _ = roundtrip(sr)
    for finding in result.findings:
        group = _group_of(back, finding.name)
        nums = _nums(group)
        assert nums["Probability"] == pytest.approx(finding.probability)
        assert nums["Threshold Value"] == pytest.approx(finding.threshold)
        codes = {_name(i): i.ConceptCodeSequence[0] for i in group.ContentSequence if i.ValueType == "CODE"}
        ftype = codes["Finding"]
        assert ftype.CodeMeaning == (finding.code.meaning if finding.code else finding.name)
        presence = codes[ftype.CodeMeaning]
        assert presence.CodeMeaning == ("Present" if finding.present else "Absent")
        if finding.site:
            assert codes["Finding Site"].CodeValue == finding.site.value
    # threshold presence: Emphysema 0.83 present, Lung nodule 0.12 absent
    assert [f.present for f in result.findings] == [True, False, True]


def test_references_resolve_to_seg_and_pmap(result, objects, roundtrip):
    seg, pmaps, sr = objects
    back, _ = roundtrip(sr)
    for finding in result.findings:
        group = _group_of(back, finding.name)
        segment_refs = [i for i in group.ContentSequence if _name(i) == "Referenced Segment"]
        if finding.segment_labels:
            ref = segment_refs[0].ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID
            assert int(ref.ReferencedSegmentNumber) == segment_number_for_label(seg, result, finding.segment_labels[0])
        else:
            assert segment_refs == []
        prob = [i for i in group.ContentSequence if i.ValueType == "NUM" and _name(i) == "Probability"][0]
        sources = [
            i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for i in prob.get("ContentSequence", [])
            if i.ValueType == "IMAGE"
        ]
        expected = [pmaps[finding.attention_index].SOPInstanceUID] if finding.attention_index is not None else []
        assert sources == expected
    # Evidence lists the source series, the SEG and the map.
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in back.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert {seg.SOPInstanceUID, pmaps[0].SOPInstanceUID} <= evidence


def test_measurements_round_trip(result, objects, roundtrip):
    seg, _, sr = objects
    back, _ = roundtrip(sr)
    found = []
    for group in _groups(back):
        tracking = [i.TextValue for i in group.ContentSequence if _name(i) == "Tracking Identifier"][0]
        if tracking.startswith("finding "):
            continue
        refs = [i.ReferencedSOPSequence[0] for i in group.ContentSequence if _name(i) == "Referenced Segment"]
        for item in group.ContentSequence:
            if item.ValueType == "NUM":
                found.append(
                    (
                        _name(item),
                        float(item.MeasuredValueSequence[0].NumericValue),
                        item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue,
                        int(refs[0].ReferencedSegmentNumber) if refs else None,
                    )
                )
    expected = [
        (
            m.concept.meaning,
            m.value,
            m.unit.value,
            segment_number_for_label(seg, result, m.segment_label) if m.segment_label else None,
        )
        for m in result.measurements
    ]
    assert sorted(found, key=str) == sorted(expected, key=str)


def test_text_flags_and_provenance(result, ctx, objects, roundtrip):
    _, _, sr = objects
    back, _ = roundtrip(sr)
    texts = [i.TextValue for i in _walk(back.ContentSequence) if i.ValueType == "TEXT"]
    assert any("Centrilobular emphysema" in t for t in texts)
    assert any("Not for diagnostic use" in t for t in texts)
    assert not any("UNTRAINED" in t for t in texts)
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.Modality == "SR"
    equipment = back.ContributingEquipmentSequence[0]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    assert equipment.Manufacturer == "Neuro Radix" and equipment.DeviceUID
    assert back.PatientID == ctx.source[0].PatientID and back.StudyInstanceUID == ctx.study_uid


def test_highdicom_parses_the_report(objects, roundtrip):
    _, _, sr = objects
    _, path = roundtrip(sr)
    report = hd.sr.srread(path)
    template = report.content
    # Emphysema and Lung nodule (with segments), left and right lung measurements
    assert len(template.get_volumetric_roi_measurement_groups()) == 4
    # Abnormal (no segment) and the lung measurements without a segment
    assert len(template.get_image_measurement_groups()) == 2


def test_without_seg_and_maps(result, ctx):
    sr = build_sr(result, ctx, None, [])
    groups = _groups(sr)
    assert all(_name(i) != "Referenced Segment" for g in groups for i in g.ContentSequence)


def test_needs_findings_or_measurements(result, ctx):
    with pytest.raises(ValueError, match="nothing to report"):
        build_sr(replace(result, findings=(), measurements=()), ctx, None, [])


def test_sr_passes_dciodvfy(objects, roundtrip):
    _, path = roundtrip(objects[2])
    errors, _ = dciodvfy(path)
    assert errors == []


def _densitometry_result(result):
    """The writer fixture's result with the lung analyzer's full densitometry list and two warnings."""
    regions = {
        (side, zone): DensityStats(1000, 900.0 + i, 4.0 + i, 9.0 + i, -930.0 + i, -860.0 + i)
        for i, (side, zone) in enumerate(
            [(s, z) for s in ("right", "left") for z in (None, "upper", "middle", "lower")]
        )
    }
    regions[("both", None)] = DensityStats(2000, 1800.0, 5.5, 10.5, -925.0, -858.0)
    measurements = density_measurements(Densitometry(regions, 42, 1.3), lung_codes(), {"left": 2, "right": 3})
    warnings = (
        "LAA-950 not comparable: sharp kernel B70f",
        "HU calibration: tracheal air reads -950 HU (expected -1000 +/- 25)",
    )
    return replace(result, findings=(), measurements=measurements, warnings=warnings)


def test_densitometry_groups_and_warnings_round_trip(result, ctx, roundtrip):
    dense = _densitometry_result(result)
    seg = build_seg(dense, ctx)
    ds, path = roundtrip(build_sr(dense, ctx, seg, build_pmaps(dense, ctx)))
    groups = _groups(ds)
    sites = {}
    for group in groups:
        for item in group.ContentSequence:
            if item.ValueType == "CODE" and _name(item) == "Finding Site":
                sites[item.ConceptCodeSequence[0].CodeMeaning] = _nums(group)
    # one group per zone of each lung, each with volume, LAA-950, LAA-910, Perc15 and MLD
    for side in ("right", "left"):
        for zone in ("upper", "middle", "lower"):
            nums = sites[f"{zone.capitalize()} zone of {side} lung"]
            assert set(nums) == {
                "Volume",
                "Percent lung volume below -950 HU",
                "Percent lung volume below -910 HU",
                "15th percentile of lung attenuation",
                "Attenuation Coefficient",
            }
    assert sites["Upper zone of right lung"]["Percent lung volume below -950 HU"] == pytest.approx(5.0)
    texts = [
        item.TextValue
        for item in _walk(ds.ContentSequence)
        if item.ValueType == "TEXT" and _name(item) == "Scan quality warning"
    ]
    assert texts == list(dense.warnings)
    errors, _ = dciodvfy(path)
    assert errors == []


def _triage_items(ds):
    """The study-level triage items of a read-back SR: (concept meaning, code value or text)."""
    out = []
    for item in _walk(ds.ContentSequence):
        concept = item.ConceptNameCodeSequence[0]
        if concept.CodingSchemeDesignator == "99NRX" and concept.CodeValue.startswith("triage-"):
            value = item.ConceptCodeSequence[0].CodeValue if item.ValueType == "CODE" else item.TextValue
            out.append((concept.CodeMeaning, value))
    return out


def test_triage_item_round_trips_and_passes_dciodvfy(result, ctx, objects, roundtrip):
    seg, pmaps, _ = objects
    decision = {
        "level": "urgent",
        "reasons": ["pleural effusion", "severe emphysema"],
        "policy_version": "site-2026-12-01",
    }
    ds, path = roundtrip(build_sr(result, ctx, seg, pmaps, triage=decision))
    assert _triage_items(ds) == [
        ("AI triage level", "urgent"),
        ("AI triage reason", "pleural effusion"),
        ("AI triage reason", "severe emphysema"),
        ("AI triage policy version", "site-2026-12-01"),
    ]
    level = next(i for i in _walk(ds.ContentSequence) if i.ValueType == "CODE" and _name(i) == "AI triage level")
    assert level.RelationshipType == "CONTAINS"
    assert level.ConceptCodeSequence[0].CodingSchemeDesignator == "99NRX"
    assert level.ConceptCodeSequence[0].CodeMeaning == "Urgent"
    assert "99NRX" in {s.CodingSchemeDesignator for s in ds.CodingSchemeIdentificationSequence}
    # the triage items sit in the Qualitative Evaluations container, beside the report text
    container = next(i for i in ds.ContentSequence if _name(i) == "Qualitative Evaluations")
    assert ("AI triage level", "urgent") in _triage_items(container)
    errors, warnings = dciodvfy(path)
    assert errors == []
    _, plain = roundtrip(build_sr(result, ctx, seg, pmaps), name="plain.dcm")
    assert set(warnings) <= set(dciodvfy(plain)[1]), "the triage item adds no dciodvfy warning"
    # highdicom still reads it as a TID 1500 report
    assert hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()


def test_without_triage_no_triage_items(objects, roundtrip):
    ds, _ = roundtrip(objects[2])
    assert _triage_items(ds) == []


def test_triage_not_analyzed_without_seg_or_maps(result, ctx, roundtrip):
    decision = {"level": "not-analyzed", "reasons": ["failed: 3 slices missing"], "policy_version": "v1"}
    ds, path = roundtrip(build_sr(result, ctx, None, [], triage=decision))
    assert _triage_items(ds)[:2] == [
        ("AI triage level", "not-analyzed"),
        ("AI triage reason", "failed: 3 slices missing"),
    ]
    errors, _ = dciodvfy(path)
    assert errors == []


def test_triage_level_must_be_known(result, ctx):
    with pytest.raises(ValueError, match="triage level"):
        build_sr(result, ctx, None, [], triage={"level": "stat", "reasons": [], "policy_version": "v1"})
    with pytest.raises(TypeError, match="reasons"):
        build_sr(result, ctx, None, [], triage={"level": "urgent", "reasons": "x", "policy_version": "v1"})
