"""Series selection by the rules in data/series_rules.json."""

from __future__ import annotations

import numpy as np
import pytest

from neuroradix.errors import ConfigError, NotEligibleError
from neuroradix.pacs.series import candidate_uids, load_rules, select_series, source_fingerprint
from neuroradix.pacs.summaries import InstanceSummary, SeriesSummary, StudySummary
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
    import json
    from importlib import resources

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
    # the scout is dropped on its summary (description, 2 instances): its metadata is never needed
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
