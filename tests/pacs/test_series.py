"""Series selection by the rules in data/series_rules.json."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from neuroradix.errors import ConfigError, NotEligibleError
from neuroradix.pacs.series import load_rules, select_series
from tests.factory import ct_series

RULES = load_rules()


def _summary(instances):
    s = pydicom.Dataset()
    first = instances[0]
    s.SeriesInstanceUID, s.Modality, s.SeriesNumber = first.SeriesInstanceUID, first.Modality, first.SeriesNumber
    s.Manufacturer = first.get("Manufacturer", "")
    return s


def _pick(*series):
    by_uid = {s[0].SeriesInstanceUID: s for s in series}
    return select_series([_summary(s) for s in series], lambda uid: by_uid[uid], RULES, "Neuro Radix")


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


def test_only_the_largest_usable_series_is_fetched():
    study = "1.2.3"
    big = ct_series(_vol(60), study_uid=study, series_number=3)
    small = ct_series(_vol(20), study_uid=study, series_number=2)
    scout = ct_series(_vol(2), study_uid=study, series_number=1, description="Topogram 0.6")
    by_uid = {s[0].SeriesInstanceUID: s for s in (big, small, scout)}
    summaries = []
    for s in (scout, small, big):
        summary = _summary(s)
        summary.NumberOfSeriesRelatedInstances = len(s)
        summary.SeriesDescription = s[0].SeriesDescription
        summaries.append(summary)
    fetched = []

    def instances(uid):
        fetched.append(uid)
        return by_uid[uid]

    chosen = select_series(summaries, instances, RULES, "Neuro Radix")
    assert chosen.series_uid == big[0].SeriesInstanceUID and fetched == [big[0].SeriesInstanceUID]
    big[7].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]  # now unusable: the next one is fetched
    fetched.clear()
    assert select_series(summaries, instances, RULES, "Neuro Radix").series_uid == small[0].SeriesInstanceUID
    assert fetched == [big[0].SeriesInstanceUID, small[0].SeriesInstanceUID]
