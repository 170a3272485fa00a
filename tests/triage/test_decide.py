"""The triage decision by example: the issue's policy on concrete results, failures, untrained
releases, holds, acknowledgements and the JSON form the ledger and channels store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from neuroradix.triage.decide import Decision, Evidence, Outcome, acknowledge, decide
from neuroradix.triage.policy import Level, Mode, load_default_policy, parse_policy
from neuroradix.writers.sr import TRIAGE_LEVELS
from tests.triage.policies import ISSUE_EXAMPLE

POLICY = parse_policy(ISSUE_EXAMPLE)
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def summary(name="lung-hu", untrained=False, findings=(), measurements=()):
    return {
        "analyzer": {"name": name, "version": "1", "title": name, "untrained": untrained},
        "findings": [{"name": n, "probability": p, "threshold": 0.5, "present": p >= 0.5} for n, p in findings],
        "measurements": [{"name": n, "value": v, "unit": "%"} for n, v in measurements],
    }


def doc(*summaries):
    return {"schema_version": "1", "results": {s["analyzer"]["name"]: s for s in summaries}}


def replace_untrained(s):
    return {**s, "analyzer": {**s["analyzer"], "untrained": True}}


def doc_named(s):
    return {"results": {s["analyzer"]["name"]: s}}


LUNG_HIGH = summary(measurements=[("Total LAA-950", 22.5), ("Total Perc15", -960.0)])
LUNG_LOW = summary(measurements=[("Total LAA-950", 3.1)])
DEEP_EFFUSION = summary("swinunetr-ctrate", findings=[("Pleural effusion", 0.91), ("Emphysema", 0.4)])
DEEP_CLEAR = summary("swinunetr-ctrate", findings=[("Pleural effusion", 0.1)])


def test_measurement_above_threshold_is_priority_with_evidence():
    d = decide(POLICY, doc(LUNG_HIGH, DEEP_CLEAR), Outcome.SUCCEEDED, None, now=T0)
    assert (d.level, d.computed_level, d.held) == (Level.PRIORITY, Level.PRIORITY, False)
    assert d.reasons == ("severe emphysema",)
    assert d.evidence == (
        Evidence("severe emphysema", Level.PRIORITY, "measurement", "Total LAA-950", 22.5, "%", 15.0, None, "lung-hu"),
    )
    assert d.evidence[0].threshold == ">= 15"
    assert (d.policy_version, d.policy_sha256, d.mode) == ("site-2026-12-01", POLICY.sha256, Mode.ACTIVE)
    assert d.decided_at == "2026-12-01T08:00:00+00:00"


def test_highest_level_wins_and_lower_rules_stay_as_evidence():
    d = decide(POLICY, doc(LUNG_HIGH, DEEP_EFFUSION), Outcome.SUCCEEDED, None, now=T0)
    assert d.level is Level.URGENT and d.reasons == ("pleural effusion",)
    assert [(e.rule, e.level, e.value, e.unit, e.analyzer) for e in d.evidence] == [
        ("pleural effusion", Level.URGENT, 0.91, "1", "swinunetr-ctrate"),
        ("severe emphysema", Level.PRIORITY, 22.5, "%", "lung-hu"),
    ]


def test_below_every_threshold_is_routine():
    d = decide(POLICY, doc(LUNG_LOW, DEEP_CLEAR), Outcome.SUCCEEDED, None, now=T0)
    assert (d.level, d.reasons, d.evidence) == (Level.ROUTINE, (), ())


def test_analyzer_scope_limits_a_rule():
    lung_with_effusion = summary(findings=[("Pleural effusion", 0.99)], measurements=[("Total LAA-950", 1.0)])
    d = decide(POLICY, doc(lung_with_effusion), Outcome.SUCCEEDED, None, now=T0)
    assert d.level is Level.ROUTINE  # the effusion rule is for the deep analyzer only


@pytest.mark.parametrize(
    ("outcome", "reason", "expected"),
    [
        (Outcome.FAILED, "3 slices missing", ("not-analyzed", "failed: 3 slices missing")),
        (Outcome.SKIPPED, "no CT series", ("not-analyzed", "skipped: no CT series")),
        (Outcome.TIMED_OUT, None, ("not-analyzed", "timed-out")),
        (Outcome.PENDING, None, ("pending", "pending")),
    ],
)
def test_job_that_did_not_succeed(outcome, reason, expected):
    d = decide(POLICY, None, outcome, None, now=T0, reason=reason)
    assert (d.level.value, d.reasons[0]) == expected
    assert d.evidence == ()


def test_no_results_is_not_analyzed():
    for results in (None, {}, {"results": {}}):
        d = decide(POLICY, results, Outcome.SUCCEEDED, None, now=T0)
        assert (d.level, d.reasons) == (Level.NOT_ANALYZED, ("no analyzer results",))


def test_untrained_release_never_raises_a_level():
    untrained = replace_untrained(DEEP_EFFUSION)
    d = decide(POLICY, doc(untrained), Outcome.SUCCEEDED, None, now=T0)
    assert d.level is Level.NOT_ANALYZED and d.reasons == ("untrained release: swinunetr-ctrate",)
    # with trained lung results beside it: the effusion rule could only read untrained output
    d = decide(POLICY, doc(LUNG_LOW, untrained), Outcome.SUCCEEDED, None, now=T0)
    assert d.level is Level.NOT_ANALYZED and "pleural effusion" in d.reasons[0] and "untrained" in d.reasons[0]
    # a trained rule that fires still decides
    d = decide(POLICY, doc(LUNG_HIGH, untrained), Outcome.SUCCEEDED, None, now=T0)
    assert d.level is Level.PRIORITY and d.reasons == ("severe emphysema",)
    # a summary that does not say it is trained counts as untrained
    unsure = {"analyzer": {"name": "lung-hu"}, "findings": [], "measurements": [{"name": "Total LAA-950", "value": 40}]}
    assert decide(POLICY, doc_named(unsure), Outcome.SUCCEEDED, None, now=T0).level is Level.NOT_ANALYZED


def test_no_rule_could_decide_is_not_analyzed_not_routine():
    other = summary(measurements=[("Right lung volume", 2500.0)])  # neither rule's target is there
    d = decide(POLICY, doc(other), Outcome.SUCCEEDED, None, now=T0)
    assert d.level is Level.NOT_ANALYZED and d.reasons[0].startswith("no rule could decide")
    # a policy without rules (the shipped default) calls any trained result routine
    assert decide(load_default_policy(), doc(other), Outcome.SUCCEEDED, None, now=T0).level is Level.ROUTINE


def test_non_numeric_values_are_ignored():
    bad = summary(measurements=[("Total LAA-950", float("nan"))])
    bad["measurements"].append({"name": "Total LAA-950", "value": "40", "unit": "%"})
    d = decide(POLICY, doc(bad), Outcome.SUCCEEDED, None, now=T0)
    assert d.level is Level.NOT_ANALYZED and d.reasons[0].startswith("no rule could decide")


def test_a_lower_rerun_is_held_until_acknowledged():
    urgent = decide(POLICY, doc(LUNG_LOW, DEEP_EFFUSION), Outcome.SUCCEEDED, None, now=T0)
    rerun = decide(POLICY, doc(LUNG_LOW, DEEP_CLEAR), Outcome.SUCCEEDED, urgent, now=T0 + timedelta(minutes=5))
    assert (rerun.level, rerun.computed_level, rerun.held) == (Level.URGENT, Level.ROUTINE, True)
    assert rerun.reasons[0] == "pleural effusion" and rerun.reasons[1].startswith("held: kept urgent")
    assert rerun.evidence == urgent.evidence and rerun.computed_reasons == ()
    again = decide(POLICY, doc(LUNG_LOW, DEEP_CLEAR), Outcome.SUCCEEDED, rerun, now=T0 + timedelta(minutes=9))
    assert len(again.reasons) == 2, "held notes do not pile up"
    seen = acknowledge(again, "dr.a", T0 + timedelta(minutes=10))
    assert (seen.level, seen.acknowledged_by, seen.acknowledged_at) == (
        Level.URGENT,
        "dr.a",
        "2026-12-01T08:10:00+00:00",
    )
    assert acknowledge(seen, "dr.b", T0 + timedelta(minutes=11)) == seen  # the first acknowledgement counts
    after = decide(POLICY, doc(LUNG_LOW, DEEP_CLEAR), Outcome.SUCCEEDED, seen, now=T0 + timedelta(minutes=12))
    assert (after.level, after.held, after.acknowledged_by) == (Level.ROUTINE, False, None)


def test_a_higher_rerun_raises_at_once():
    routine = decide(POLICY, doc(LUNG_LOW, DEEP_CLEAR), Outcome.SUCCEEDED, None, now=T0)
    urgent = decide(POLICY, doc(LUNG_LOW, DEEP_EFFUSION), Outcome.SUCCEEDED, routine, now=T0 + timedelta(minutes=1))
    assert (urgent.level, urgent.held) == (Level.URGENT, False)


def test_a_failed_rerun_keeps_the_decided_level_even_after_acknowledgement():
    priority = decide(POLICY, doc(LUNG_HIGH), Outcome.SUCCEEDED, None, now=T0)
    failed = decide(POLICY, None, Outcome.FAILED, priority, now=T0 + timedelta(minutes=1), reason="PACS said 500")
    assert (failed.level, failed.computed_level, failed.held) == (Level.PRIORITY, Level.NOT_ANALYZED, True)
    assert failed.computed_reasons == ("failed: PACS said 500",)
    seen = acknowledge(priority, "dr.a", T0 + timedelta(minutes=2))
    pending = decide(POLICY, None, Outcome.PENDING, seen, now=T0 + timedelta(minutes=3))
    assert (pending.level, pending.held, pending.acknowledged_by) == (Level.PRIORITY, True, "dr.a")


def test_an_acknowledgement_carries_over_only_to_the_same_decision():
    first = acknowledge(decide(POLICY, doc(LUNG_HIGH), Outcome.SUCCEEDED, None, now=T0), "dr.a", T0)
    same = decide(POLICY, doc(LUNG_HIGH), Outcome.SUCCEEDED, first, now=T0 + timedelta(minutes=1))
    assert same.acknowledged_by == "dr.a"
    two_rules = parse_policy(
        ISSUE_EXAMPLE + "  - name: low perc15\n    level: priority\n    measurement: Total Perc15\n    at_most: -950\n"
    )
    new_reason = decide(two_rules, doc(LUNG_HIGH), Outcome.SUCCEEDED, first, now=T0 + timedelta(minutes=2))
    assert new_reason.reasons == ("severe emphysema", "low perc15") and not new_reason.acknowledged


def test_shadow_mode_is_recorded():
    shadow = replace(POLICY, mode=Mode.SHADOW)
    assert decide(shadow, doc(LUNG_HIGH), Outcome.SUCCEEDED, None, now=T0).mode is Mode.SHADOW


def test_times_must_be_timezone_aware_and_are_stored_in_utc():
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(POLICY, None, Outcome.PENDING, None, now=datetime(2026, 12, 1, 8, 0))
    local = datetime(2026, 12, 1, 9, 0, tzinfo=timezone(timedelta(hours=1)))
    assert decide(POLICY, None, Outcome.PENDING, None, now=local).decided_at == "2026-12-01T08:00:00+00:00"
    with pytest.raises(ValueError, match="who"):
        acknowledge(decide(POLICY, None, Outcome.PENDING, None, now=T0), " ", T0)


def test_json_round_trip_and_shape():
    d = acknowledge(decide(POLICY, doc(LUNG_HIGH, DEEP_EFFUSION), Outcome.SUCCEEDED, None, now=T0), "dr.a", T0)
    data = d.to_json()
    assert data["level"] == "urgent" and data["evidence"][0]["threshold"] == ">= 0.8"
    assert Decision.from_json(data) == d
    with pytest.raises(ValueError):
        Decision.from_json({**data, "level": "stat"})


def test_every_level_has_an_sr_code():
    assert set(TRIAGE_LEVELS) == {lv.value for lv in Level}
