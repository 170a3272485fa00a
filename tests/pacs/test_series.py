"""Series selection by the rules in data/series_rules.json."""

from __future__ import annotations

import copy
import json
from importlib import resources

import numpy as np
import pydicom
import pytest

from neuroradix.config import PipelineSettings
from neuroradix.errors import ConfigError, InputTooLargeError, NotEligibleError
from neuroradix.imaging.enhanced import classic_to_enhanced_ct
from neuroradix.pacs.series import candidate_uids, load_rules, select_series, source_fingerprint
from neuroradix.pacs.summaries import InstanceSummary, SeriesSummary, StudySummary
from neuroradix.pipeline.run import size_limits
from tests.factory import ct_series

RULES = load_rules()


def _summary(instances):
    return SeriesSummary.from_dataset(instances[0])


def _metadata(*series):
    return {str(s[0].SeriesInstanceUID): [InstanceSummary.from_dataset(ds) for ds in s] for s in series}


def _pick(*series):
    return select_series([_summary(s) for s in series], _metadata(*series), RULES, "Neuro Radix")


def _vol(n, rows=8, cols=8):
    return np.zeros((n, rows, cols), np.float32)


def test_most_slices_wins_and_thinner_breaks_ties():
    study = "1.2.3"
    thick = ct_series(_vol(40), slice_spacing=5.0, study_uid=study, series_number=2)
    thin = ct_series(_vol(120), slice_spacing=1.25, study_uid=study, series_number=3)
    assert _pick(thick, thin).series_uid == thin[0].SeriesInstanceUID
    same_a = ct_series(_vol(40), slice_spacing=2.0, study_uid=study, series_number=4)
    same_b = ct_series(_vol(40), slice_spacing=1.5, study_uid=study, series_number=5)
    assert _pick(same_a, same_b).series_uid == same_b[0].SeriesInstanceUID


def test_localizer_derived_and_reformat_are_not_used():
    scout = ct_series(_vol(30), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_number=1)
    derived = ct_series(_vol(200), image_type=("DERIVED", "SECONDARY", "AXIAL"), series_number=7)
    coronal = ct_series(_vol(60), row_dir=(1, 0, 0), col_dir=(0, 0, -1), series_number=8)
    good = ct_series(_vol(50), series_number=3)
    assert _pick(scout, derived, coronal, good).series_uid == good[0].SeriesInstanceUID
    with pytest.raises(NotEligibleError) as err:
        _pick(scout, derived, coronal)
    message = str(err.value)
    assert "LOCALIZER" in message and "not ORIGINAL" in message and "not axial" in message


def test_non_ct_study_is_not_eligible_with_reason():
    mr = ct_series(_vol(30), modality="MR")
    with pytest.raises(NotEligibleError, match="modality is not CT"):
        _pick(mr)


def test_too_few_slices_and_mixed_orientation():
    few = ct_series(_vol(4))
    mixed = ct_series(_vol(30))
    mixed[5].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    with pytest.raises(NotEligibleError) as err:
        _pick(few, mixed)
    assert "fewer than 10" in str(err.value) and "mixed orientations" in str(err.value)


def test_own_output_series_are_ignored():
    ours = ct_series(_vol(300))
    for ds in ours:
        ds.Manufacturer = "Neuro Radix"
    good = ct_series(_vol(50))
    assert _pick(ours, good).series_uid == good[0].SeriesInstanceUID


def test_rules_are_validated_on_load():
    with pytest.raises(ConfigError, match="missing keys"):
        load_rules('{"modalities": ["CT"]}')
    data = json.loads((resources.files("neuroradix") / "data" / "series_rules.json").read_text())
    data["ranking"] = ["biggest_font"]
    with pytest.raises(ConfigError, match="unknown ranking"):
        load_rules(json.dumps(data))


def test_candidates_are_named_largest_first_and_selection_is_pure():
    study = "1.2.3"
    big = ct_series(_vol(60), study_uid=study, series_number=3)
    small = ct_series(_vol(20), study_uid=study, series_number=2)
    scout = ct_series(_vol(2), study_uid=study, series_number=1, description="Topogram 0.6")
    summaries = []
    for s in (scout, small, big):
        summary = SeriesSummary.from_dataset(s[0])
        summaries.append(
            SeriesSummary(
                summary.series_uid,
                summary.modality,
                summary.series_number,
                s[0].SeriesDescription,
                summary.manufacturer,
                len(s),
            )
        )
    # the scout is dropped on its summary (its description): its metadata is never needed
    assert candidate_uids(summaries, RULES, "Neuro Radix") == [big[0].SeriesInstanceUID, small[0].SeriesInstanceUID]
    metadata = _metadata(big, small)
    assert select_series(summaries, metadata, RULES, "Neuro Radix").series_uid == big[0].SeriesInstanceUID
    big[7].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]  # now unusable: the next group wins
    metadata = _metadata(big, small)
    assert select_series(summaries, metadata, RULES, "Neuro Radix").series_uid == small[0].SeriesInstanceUID
    with pytest.raises(NotEligibleError, match="series 2 \\(CT\\): series has no instances"):
        select_series(summaries, _metadata(big), RULES, "Neuro Radix")  # a candidate without metadata


def test_summaries_parse_dicom_json_once():
    """QIDO-RS / WADO-RS metadata JSON becomes typed summaries; callers never read tags."""
    study = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00080061": {"vr": "CS", "Value": ["CT", "SEG"]}}
    assert StudySummary.from_json(study) == StudySummary("1.2.3", ("CT", "SEG"))
    series = {
        "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00200011": {"vr": "IS", "Value": [5]},
        "00201209": {"vr": "IS", "Value": [120]},
        "00080070": {"vr": "LO", "Value": ["ACME"]},
        "0008103E": {"vr": "LO", "Value": ["Thorax 1.0"]},
    }
    summary = SeriesSummary.from_json(series)
    assert summary == SeriesSummary("1.2.3.4", "CT", 5, "Thorax 1.0", "ACME", 120)
    assert summary.label == "series 5 (CT)"
    assert SeriesSummary.from_json({"0020000E": {"vr": "UI", "Value": ["9"]}}).n_instances is None
    instance = ct_series(_vol(12), series_number=4)[3]
    item = instance.to_json_dict(bulk_data_threshold=64, bulk_data_element_handler=lambda _el: "http://pacs/bulk/1")
    parsed = InstanceSummary.from_json(item)
    assert parsed == InstanceSummary.from_dataset(instance)
    assert parsed.image_orientation == tuple(float(v) for v in instance.ImageOrientationPatient)
    assert parsed.rows == 8 and parsed.series_number == 4 and parsed.image_type[0] == "ORIGINAL"


def test_fingerprint_ignores_own_series_and_counts_instances():
    a = SeriesSummary("1.2.3.1", "CT", 1, "", "ACME", 120)
    ours = SeriesSummary("2.25.9", "SEG", 9001, "", "Neuro Radix", 1)
    assert source_fingerprint([a, ours], "Neuro Radix") == source_fingerprint([a], "Neuro Radix")
    more = SeriesSummary("1.2.3.1", "CT", 1, "", "ACME", 121)
    assert source_fingerprint([more], "Neuro Radix") != source_fingerprint([a], "Neuro Radix")


def test_old_rule_keys_are_refused_with_where_they_went():
    data = json.loads((resources.files("neuroradix") / "data" / "series_rules.json").read_text())
    with pytest.raises(ConfigError, match="max_slices is gone.*NEURORADIX_MAX_SERIES_INSTANCES"):
        load_rules(json.dumps({**data, "max_slices": 2000}))
    with pytest.raises(ConfigError, match="orientation_tolerance is gone"):
        load_rules(json.dumps({**data, "orientation_tolerance": 0.001}))
    with pytest.raises(ConfigError, match="unknown keys \\['max_slice'\\]"):
        load_rules(json.dumps({**data, "max_slice": 1}))


def _summaries(n: int, uid: str = "1.2.3.9") -> list[InstanceSummary]:
    """Metadata of an ``n``-slice axial series (no datasets needed)."""
    return [
        InstanceSummary(
            f"{uid}.{k}",
            uid,
            "1.2.840.10008.5.1.4.1.1.2",
            "CT",
            4,
            "Thin chest",
            ("ORIGINAL", "PRIMARY", "AXIAL"),
            (1, 0, 0, 0, 1, 0),
            (0.0, 0.0, 0.5 * k),
            (0.7, 0.7),
            512,
            512,
            16,
        )
        for k in range(n)
    ]


def test_the_slice_cap_is_the_setting_alone():
    """Raising NEURORADIX_MAX_SERIES_INSTANCES is enough: no second cap in the rules file skips the series."""
    metadata = {"1.2.3.9": _summaries(2500)}
    summary = [SeriesSummary("1.2.3.9", "CT", 4, "Thin chest", "ACME", 2500)]
    with pytest.raises(InputTooLargeError, match="2500 instances, above the limit of 2000.*NEURORADIX_MAX_SERIES"):
        select_series(summary, metadata, RULES, "Neuro Radix", size_limits(PipelineSettings()))
    raised = PipelineSettings(max_series_instances=3000, max_volume_voxels=2500 * 512 * 512)
    chosen = select_series(summary, metadata, RULES, "Neuro Radix", size_limits(raised))
    assert chosen.n_slices == 2500


def _enhanced(series, **kwargs):
    ds = classic_to_enhanced_ct(series, **kwargs)
    del ds.PixelData  # metadata, as WADO-RS gives it
    return [ds]


def _as_wado_metadata(datasets) -> list[InstanceSummary]:
    return [InstanceSummary.from_json(ds.to_json_dict(bulk_data_threshold=1 << 20)) for ds in datasets]


def test_enhanced_ct_is_selected_by_its_frames():
    study = "1.2.3"
    thick = ct_series(_vol(40), slice_spacing=5.0, study_uid=study, series_number=2)
    thin = _enhanced(ct_series(_vol(120), slice_spacing=1.25, study_uid=study, series_number=3))
    summaries = [_summary(s) for s in (thick, thin)]
    metadata = {str(thick[0].SeriesInstanceUID): _as_wado_metadata(thick)}
    metadata[str(thin[0].SeriesInstanceUID)] = _as_wado_metadata(thin)
    assert len(metadata[str(thin[0].SeriesInstanceUID)][0].planes) == 120  # frames read from DICOM JSON
    chosen = select_series(summaries, metadata, RULES, "Neuro Radix")
    assert chosen.series_uid == thin[0].SeriesInstanceUID and chosen.n_slices == 120
    assert chosen.slice_spacing == pytest.approx(1.25)


def test_enhanced_frames_are_checked_like_slices():
    localizer = _enhanced(ct_series(_vol(20), series_number=5, description="Thorax"))
    frames = localizer[0].PerFrameFunctionalGroupsSequence
    frames[0].CTImageFrameTypeSequence = pydicom_sequence(
        ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"], localizer[0].SharedFunctionalGroupsSequence[0]
    )
    few = _enhanced(ct_series(_vol(6), series_number=6))
    with pytest.raises(NotEligibleError) as err:
        select_series([_summary(localizer), _summary(few)], _metadata(localizer, few), RULES, "Neuro Radix")
    assert "series 5 (CT): frame type contains ['LOCALIZER'] (frame 1)" in str(err.value)
    assert "series 6 (CT): 6 slices, fewer than 10" in str(err.value)


def pydicom_sequence(frame_type, shared):
    """A per-frame CT Image Frame Type item that overrides the shared one with ``frame_type``."""
    item = copy.deepcopy(shared.CTImageFrameTypeSequence[0])
    item.FrameType = frame_type
    return pydicom.sequence.Sequence([item])
