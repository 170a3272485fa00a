"""Comprehensive 3D SR, TID 1500 Measurement Report, from a :class:`~neuroradix.types.StudyResult`.

Content tree (``highdicom.sr.MeasurementReport``):

* observation context: the analyzer as the observing device (its Device UID);
* procedure reported: LOINC 24627-2 "CT Chest";
* Imaging Measurements, one group per finding: TID 1411 (volumetric ROI) referencing
  the first SEG segment of ``Finding.segment_labels`` that was written, else TID 1501.
  Each holds the finding type (``Finding.code``, or a local code for the name), the
  finding site, a NUM "Probability" (DCM 122157) in UCUM ``1`` (a fraction in [0, 1],
  the same number the analyzer returned), a NUM "Threshold Value" (DCM 122411), and a
  qualitative evaluation "<finding> = Present/Absent" from the threshold. The
  probability's "Source of Measurement" is the finding's attention map (Parametric Map);
* one group per SEG segment that has measurements (TID 1411, referencing the segment),
  and one TID 1501 group per finding site for measurements without a segment;
* a "Qualitative Evaluations" container (TID 1500 rows 10-12) with the report text,
  one TEXT item per ``StudyResult.warnings`` entry (private concept 99NRX QCWARN "Scan quality
  warning", e.g. "LAA-950 not comparable: sharp kernel B70f") and a comment that carries "Not for diagnostic use" and, for untrained analyzers,
  "UNTRAINED - TEST OUTPUT";
* when a triage decision is given (``build_sr(..., triage=decision.to_json())``), the
  same container holds the study-level triage item: the level as a CODE (99NRX "AI triage level",
  value e.g. 99NRX "urgent"), one TEXT "AI triage reason" per reason (the names of the rules that
  fired, or why the study was not analyzed) and a TEXT "AI triage policy version". The concepts
  are private (99NRX, identified in the Coding Scheme Identification Sequence): no DICOM or SNOMED
  concept names an AI worklist priority.

The document is UNVERIFIED and PARTIAL (machine output, never signed off).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Mapping, Optional, Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from neuroradix import MANUFACTURER
from neuroradix.types import Code, Finding, Measurement, StudyResult
from neuroradix.uids import derive_uid
from neuroradix.writers.common import (
    ObjectKind,
    OutputContext,
    ascii_text,
    check_result,
    coded,
    content_note,
    device_uid,
    equipment_kwargs,
    finish_dataset,
    local_code,
    output_uids,
    series_description,
    series_number,
    short_string,
)
from neuroradix.writers.seg import segment_number_for_label

logger = logging.getLogger(__name__)

CT_CHEST = Code("24627-2", "LN", "CT Chest")
PROBABILITY = Code("122157", "DCM", "Probability")
THRESHOLD = Code("122411", "DCM", "Threshold Value")
UNITY = Code("1", "UCUM", "no units")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
WHOLE_STUDY = Code("whole-study", "99NRX", "Whole study")
#: A stated caveat of the result (``StudyResult.warnings``), e.g. a sharp kernel: private, as no
#: DICOM concept says "scan-quality warning".
QUALITY_WARNING = Code("QCWARN", "99NRX", "Scan quality warning")
#: The study-level triage item: private concepts, as no standard one names an AI triage level.
TRIAGE_LEVEL = Code("triage-level", "99NRX", "AI triage level")
TRIAGE_REASON = Code("triage-reason", "99NRX", "AI triage reason")
TRIAGE_POLICY = Code("triage-policy", "99NRX", "AI triage policy version")
#: The values of :data:`TRIAGE_LEVEL`, one per ``neuroradix.triage.Level`` value.
TRIAGE_LEVELS = {
    "urgent": Code("urgent", "99NRX", "Urgent"),
    "priority": Code("priority", "99NRX", "Priority"),
    "routine": Code("routine", "99NRX", "Routine"),
    "pending": Code("pending", "99NRX", "Pending"),
    "not-analyzed": Code("not-analyzed", "99NRX", "Not analyzed"),
}


def _algorithm(result: StudyResult) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=short_string(result.analyzer.title or result.analyzer.name),
        version=short_string(result.analyzer.version),
    )


def _tracking(ctx: OutputContext, result: StudyResult, what: str) -> hd.sr.TrackingIdentifier:
    uid = derive_uid(ctx.study_uid, ctx.source_series_uid, ctx.pipeline_version, result.analyzer.name, "track", what)
    return hd.sr.TrackingIdentifier(uid=uid, identifier=short_string(what))


def _referenced_segment(seg: Optional[Dataset], result: StudyResult, ctx: OutputContext, labels: Sequence[int]):
    if seg is None:
        return None
    for label in labels:
        number = segment_number_for_label(seg, result, label)
        if number is not None:
            return hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(ctx.source_series_uid),
            )
    return None


def finding_type(finding: Finding) -> hd.sr.CodedConcept:
    """The coded finding: ``Finding.code`` or a local code built from its name."""
    return coded(finding.code) if finding.code is not None else local_code(finding.name)


def _finding_group(finding: Finding, result: StudyResult, ctx: OutputContext, seg, pmaps):
    ftype = finding_type(finding)
    images = None
    if finding.attention_index is not None and finding.attention_index < len(pmaps):
        pmap = pmaps[finding.attention_index]
        images = [hd.sr.SourceImageForMeasurement(pmap.SOPClassUID, pmap.SOPInstanceUID)]
    measurements = [
        hd.sr.Measurement(
            name=coded(PROBABILITY),
            value=float(finding.probability),
            unit=coded(UNITY),
            referenced_images=images,
            algorithm_id=_algorithm(result),
        ),
        hd.sr.Measurement(name=coded(THRESHOLD), value=float(finding.threshold), unit=coded(UNITY)),
    ]
    presence = codes.DCM.Present if finding.present else codes.DCM.Absent
    kwargs: dict[str, Any] = dict(
        tracking_identifier=_tracking(ctx, result, f"finding {finding.name}"),
        finding_type=ftype,
        algorithm_id=_algorithm(result),
        finding_sites=[hd.sr.FindingSite(coded(finding.site))] if finding.site is not None else None,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(ftype, presence)],
    )
    segment = _referenced_segment(seg, result, ctx, finding.segment_labels)
    if segment is not None:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **kwargs)
    return hd.sr.MeasurementsAndQualitativeEvaluations(**kwargs)


def _measurement(m: Measurement) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=coded(m.concept),
        value=float(m.value),
        unit=coded(m.unit),
        derivation=coded(m.derivation) if m.derivation is not None else None,
        finding_sites=[hd.sr.FindingSite(coded(m.site))] if m.site is not None else None,
    )


def _measurement_groups(result: StudyResult, ctx: OutputContext, seg: Optional[Dataset]) -> list:
    by_segment: dict[int, list[Measurement]] = defaultdict(list)
    by_site: dict[Optional[Code], list[Measurement]] = defaultdict(list)
    for m in result.measurements:
        has_segment = (
            m.segment_label is not None
            and seg is not None
            and (segment_number_for_label(seg, result, m.segment_label) is not None)
        )
        if has_segment and m.segment_label is not None:
            by_segment[m.segment_label].append(m)
        else:
            by_site[m.site].append(m)
    descriptions = {s.label: s for s in result.segments}
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = []
    for label, items in sorted(by_segment.items()):
        desc = descriptions[label]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(ctx, result, f"segment {desc.name}"),
                referenced_segment=_referenced_segment(seg, result, ctx, [label]),
                finding_type=coded(desc.type),
                finding_category=coded(desc.category),
                algorithm_id=_algorithm(result),
                measurements=[_measurement(m) for m in items],
            )
        )
    for site, items in by_site.items():
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(ctx, result, f"measurements {site.meaning if site else 'study'}"),
                finding_type=coded(site if site is not None else WHOLE_STUDY),
                finding_sites=[hd.sr.FindingSite(coded(site))] if site is not None else None,
                algorithm_id=_algorithm(result),
                measurements=[_measurement(m) for m in items],
            )
        )
    return groups


def triage_content(decision: Mapping[str, Any]) -> list[hd.sr.ContentItem]:
    """The SR items of a study's triage decision: level (CODE), reasons and policy version (TEXT).

    Parameters
    ----------
    decision:
        A decision as ``neuroradix.triage.Decision.to_json()`` gives it: ``level`` (one of
        :data:`TRIAGE_LEVELS`), ``reasons`` (a list of text) and ``policy_version``.

    Returns
    -------
    list[highdicom.sr.ContentItem]
        Items with relationship CONTAINS, for the "Qualitative Evaluations" container.

    Raises
    ------
    ValueError
        For an unknown level; ``TypeError`` when reasons is not a list of text.
    """
    level = decision.get("level")
    if level not in TRIAGE_LEVELS:
        raise ValueError(f"triage level must be one of {sorted(TRIAGE_LEVELS)}, got {level!r}")
    reasons = decision.get("reasons", [])
    if isinstance(reasons, str) or not all(isinstance(r, str) for r in reasons):
        raise TypeError("triage reasons must be a list of text")
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(name=coded(TRIAGE_LEVEL), value=coded(TRIAGE_LEVELS[level]), relationship_type=contains)
    ]
    items += [
        hd.sr.TextContentItem(name=coded(TRIAGE_REASON), value=ascii_text(r), relationship_type=contains)
        for r in reasons
        if r.strip()
    ]
    items.append(
        hd.sr.TextContentItem(
            name=coded(TRIAGE_POLICY),
            value=ascii_text(str(decision.get("policy_version", ""))) or "unknown",
            relationship_type=contains,
        )
    )
    return items


def _text_container(result: StudyResult, triage: Optional[Mapping[str, Any]] = None) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=coded(QUALITATIVE_EVALUATIONS), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    items: list[hd.sr.ContentItem] = [] if triage is None else triage_content(triage)
    if result.report_text.strip():
        items.append(
            hd.sr.TextContentItem(
                name=codes.DCM.Finding,
                value=ascii_text(result.report_text.strip()),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    for warning in result.warnings:
        items.append(
            hd.sr.TextContentItem(
                name=coded(QUALITY_WARNING),
                value=ascii_text(warning),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    items.append(
        hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=content_note(result), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_sr(
    result: StudyResult,
    ctx: OutputContext,
    seg: Optional[Dataset],
    pmaps: Sequence[Dataset],
    triage: Optional[Mapping[str, Any]] = None,
) -> Dataset:
    """Build the TID 1500 Comprehensive 3D SR.

    Parameters
    ----------
    result:
        The analyzer's output.
    ctx:
        Source series and settings.
    seg:
        The SEG from :func:`~neuroradix.writers.seg.build_seg` (``None`` when no segment
        was written): segment references point into it.
    pmaps:
        The Parametric Maps from :func:`~neuroradix.writers.pmap.build_pmaps`, in
        ``result.attention`` order: ``Finding.attention_index`` picks one.
    triage:
        The study's triage decision (``Decision.to_json()``), written as the study-level triage
        item (see :func:`triage_content`); ``None`` writes none.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sr.Comprehensive3DSR``, not yet stored.
    """
    check_result(result, ctx)
    pmaps = list(pmaps)
    groups = [_finding_group(f, result, ctx, seg, pmaps) for f in result.findings]
    groups += _measurement_groups(result, ctx, seg)
    if not groups:
        raise ValueError("StudyResult has neither findings nor measurements: nothing to report in an SR")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(result),
            name=short_string(result.analyzer.name),
            manufacturer_name=MANUFACTURER,
            model_name=short_string(result.analyzer.title or result.analyzer.name),
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=coded(CT_CHEST),
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_text_container(result, triage))
    evidence = list(ctx.source) + ([seg] if seg is not None else []) + pmaps
    series_uid, sop_uid = output_uids(result, ctx, ObjectKind.SR)
    description = series_description(result, "findings and measurements")
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_uid,
        series_number=series_number(ctx, ObjectKind.SR),
        sop_instance_uid=sop_uid,
        instance_number=1,
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=description,
        **equipment_kwargs(result, ctx),
    )
    return finish_dataset(sr, result, ctx, description)
