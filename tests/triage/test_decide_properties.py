"""Property-based tests of the triage decision (hypothesis): random policies, random sequences of
reruns (results or failures) and acknowledgements.

The fired rules are recomputed here by a deliberately plain model of the policy (every rule, every
trained result in scope, inclusive thresholds), independent of ``decide``'s code paths.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from neuroradix.triage.decide import Decision, Outcome, acknowledge, decide
from neuroradix.triage.policy import Level, Mode, Rule, TriagePolicy

FINDINGS = ("Pleural effusion", "Emphysema", "Abnormal")
MEASUREMENTS = ("Total LAA-950", "Total Perc15", "Right lung volume")
ANALYZERS = ("lung-hu", "swinunetr-ctrate", "merlin-ctrate")
SCOPES = (None, "deep", "lung-hu", "swinunetr-ctrate")
DECIDED = (Level.URGENT, Level.PRIORITY, Level.ROUTINE)
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

unit_interval = st.floats(0.0, 1.0, allow_nan=False)
values = st.floats(-1000.0, 1000.0, allow_nan=False).map(lambda v: round(v, 2))


@st.composite
def rules(draw, index: int) -> Rule:
    level = draw(st.sampled_from(DECIDED))
    scope = draw(st.sampled_from(SCOPES))
    if draw(st.booleans()):
        return Rule(
            f"r{index}",
            level,
            finding=draw(st.sampled_from(FINDINGS)),
            probability_at_least=draw(unit_interval),
            analyzer=scope,
        )
    low = draw(st.none() | values)
    high = draw(st.none() | values) if low is not None else draw(values)
    if low is not None and high is not None and low > high:
        low, high = high, low
    return Rule(
        f"r{index}", level, measurement=draw(st.sampled_from(MEASUREMENTS)), at_least=low, at_most=high, analyzer=scope
    )


@st.composite
def policies(draw) -> TriagePolicy:
    count = draw(st.integers(0, 5))
    return TriagePolicy(
        version=draw(st.sampled_from(("v1", "site-2026-12-01"))),
        mode=draw(st.sampled_from(Mode)),
        escalate_after_minutes=30.0,
        max_wait_minutes=60.0,
        rules=tuple(draw(rules(i)) for i in range(count)),
        sha256=draw(st.sampled_from(("a" * 64, "b" * 64))),
    )


@st.composite
def summaries(draw, name: str, untrained: bool) -> dict:
    findings = [
        {"name": f, "probability": draw(unit_interval)} for f in draw(st.lists(st.sampled_from(FINDINGS), unique=True))
    ]
    measurements = [
        {"name": m, "value": draw(values), "unit": "%"}
        for m in draw(st.lists(st.sampled_from(MEASUREMENTS), unique=True))
    ]
    return {"analyzer": {"name": name, "untrained": untrained}, "findings": findings, "measurements": measurements}


@st.composite
def documents(draw, all_untrained: bool = False) -> dict:
    names = draw(st.lists(st.sampled_from(ANALYZERS), unique=True, max_size=3))
    return {"results": {n: draw(summaries(n, True if all_untrained else draw(st.booleans()))) for n in names}}


runs = st.tuples(
    st.just("run"),
    st.one_of(st.none(), documents()),
    st.sampled_from(Outcome),
    st.sampled_from((None, "3 slices missing")),
)
acks = st.tuples(st.just("ack"), st.sampled_from(("dr.a", "dr.b")))
steps = st.lists(st.one_of(runs, runs, acks), min_size=1, max_size=12)


def fired_model(policy: TriagePolicy, document: dict | None) -> list[Rule]:
    """The rules that fire on the trained results, by the plain reading of the policy."""
    out = []
    for rule in policy.rules:
        for name, summary in ((document or {}).get("results") or {}).items():
            if summary["analyzer"]["untrained"]:
                continue
            if rule.analyzer not in (None, name) and not (rule.analyzer == "deep" and name.endswith("-ctrate")):
                continue
            items = summary["findings"] if rule.finding else summary["measurements"]
            key = "probability" if rule.finding else "value"
            for item in items:
                if item["name"] == rule.target:
                    v = item[key]
                    if (rule.low is None or v >= rule.low) and (rule.at_most is None or v <= rule.at_most):
                        out.append(rule)
                        break
    return list(dict.fromkeys(out))


def replay(policy: TriagePolicy, sequence) -> list[tuple[str, Decision | None, Decision]]:
    """Run the steps; return (kind, previous, new) per step that produced a decision."""
    current: Decision | None = None
    out = []
    now = T0
    for step in sequence:
        now += timedelta(minutes=3)
        if step[0] == "ack":
            if current is None:
                continue
            new = acknowledge(current, step[1], now)
        else:
            _, document, outcome, reason = step
            new = decide(policy, document, outcome, current, now=now, reason=reason)
        out.append((step[0], current, new))
        current = new
    return out


@settings(max_examples=150)
@given(policies(), steps)
def test_level_never_goes_down_unless_acknowledged(policy, sequence):
    for kind, previous, new in replay(policy, sequence):
        if kind == "ack" or previous is None:
            continue
        if previous.level.decided:
            assert new.level.decided, "a state replaced a decided level"
        if new.level.rank < previous.level.rank:
            assert previous.acknowledged, f"{previous.level} -> {new.level} without an acknowledgement"
        assert new.held == (new.level is not new.computed_level)
        if new.held:
            assert new.level is previous.level


@settings(max_examples=150)
@given(policies(), steps)
def test_acknowledgement_releases_the_hold(policy, sequence):
    for kind, previous, new in replay(policy, sequence):
        if kind == "run" and previous is not None and previous.acknowledged:
            if new.computed_level.decided or not previous.level.decided:
                assert new.level is new.computed_level and not new.held


@settings(max_examples=150)
@given(policies(), documents(), st.sampled_from(Outcome), st.one_of(st.none(), steps))
def test_decision_is_deterministic(policy, document, outcome, history):
    played = replay(policy, history) if history else []
    previous = played[-1][2] if played else None
    now = T0 + timedelta(hours=2)
    assert decide(policy, document, outcome, previous, now=now) == decide(policy, document, outcome, previous, now=now)


@settings(max_examples=250)
@given(policies(), documents())
def test_reasons_are_exactly_the_fired_rules_of_the_winning_level(policy, document):
    decision = decide(policy, document, Outcome.SUCCEEDED, None, now=T0)
    fired = fired_model(policy, document)
    if fired:
        top = max(r.level.rank for r in fired)
        assert decision.computed_level.rank == top
        assert list(decision.reasons) == [r.name for r in policy.rules if r in fired and r.level.rank == top]
        assert {e.rule for e in decision.evidence} == {r.name for r in fired}
    else:
        assert decision.level in (Level.ROUTINE, Level.NOT_ANALYZED)
        assert decision.evidence == ()
        assert not set(decision.reasons) & {r.name for r in policy.rules}


@settings(max_examples=150)
@given(policies(), documents(all_untrained=True))
def test_untrained_only_results_never_rise_above_not_analyzed(policy, document):
    decision = decide(policy, document, Outcome.SUCCEEDED, None, now=T0)
    assert decision.level is Level.NOT_ANALYZED
    assert decision.evidence == ()


@settings(max_examples=150)
@given(policies(), steps)
def test_json_round_trip(policy, sequence):
    for _, _, decision in replay(policy, sequence):
        data = json.loads(json.dumps(decision.to_json()))
        back = Decision.from_json(data)
        assert back == decision
        assert back.to_json() == decision.to_json()
        assert back.policy_version == policy.version and back.mode is policy.mode
