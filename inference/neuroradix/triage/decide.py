"""The triage decision: a pure function of (policy, results, job outcome, previous decision).

No PACS, no clock, no I/O: the caller passes ``now``. The rules, in order:

1. A job that did not succeed is ``not-analyzed`` with the reason (``pending`` while it waits).
2. Only results of trained analyzers count. A rule *applies* when its finding or measurement is
   in a trained analyzer's results within the rule's scope, and *fires* when the value meets its
   threshold. The highest level that fires wins; the reasons are the names of the rules at that
   level, in policy order; every fired rule is kept as :class:`Evidence`.
3. When nothing fires the study is ``routine``, unless that would hide a gap: it is
   ``not-analyzed`` when there are no results, when every result is from an untrained release,
   when a rule could only be evaluated on untrained output ("untrained release"), or when the
   policy has rules and none of them could be evaluated ("no rule could decide").
4. Never down: a computed level below the previous decision's does not replace it while that
   decision is unacknowledged (``held``; the lower one is recorded in ``computed_level``). A state
   (pending, not-analyzed) never replaces a decided level, acknowledged or not.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Optional

from neuroradix.triage.policy import Level, Mode, Rule, TriagePolicy, analyzer_in_scope

__all__ = ["Decision", "Evidence", "Outcome", "acknowledge", "decide"]

HELD_NOTE = "held:"  # prefix of the note a held decision adds to the previous reasons
PROBABILITY_UNIT = "1"  # UCUM "no units": a probability in 0..1


class Outcome(str, enum.Enum):
    """How the study's job ended (or that it has not yet)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    TIMED_OUT = "timed-out"
    PENDING = "pending"


@dataclass(frozen=True)
class Evidence:
    """What made a rule fire: the value an analyzer produced and the rule's threshold(s).

    ``at_least`` is the rule's ``probability_at_least`` for a finding; ``unit`` is UCUM ``1``
    for a probability, else the measurement's unit as in ``results.json``.
    """

    rule: str
    level: Level
    kind: str  # "finding" or "measurement"
    name: str
    value: float
    unit: str
    at_least: Optional[float]
    at_most: Optional[float]
    analyzer: str

    @property
    def threshold(self) -> str:
        """The threshold as text: ``>= 0.8``, ``<= -950`` or ``15 to 20``."""
        if self.at_least is not None and self.at_most is not None:
            return f"{self.at_least:g} to {self.at_most:g}"
        if self.at_least is not None:
            return f">= {self.at_least:g}"
        return f"<= {self.at_most:g}"

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (``threshold`` included for readers; ignored by :meth:`from_json`)."""
        return {
            "rule": self.rule,
            "level": self.level.value,
            "kind": self.kind,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "at_least": self.at_least,
            "at_most": self.at_most,
            "analyzer": self.analyzer,
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Evidence:
        """Inverse of :meth:`to_json`."""
        return cls(
            rule=str(data["rule"]),
            level=Level(data["level"]),
            kind=str(data["kind"]),
            name=str(data["name"]),
            value=float(data["value"]),
            unit=str(data["unit"]),
            at_least=None if data.get("at_least") is None else float(data["at_least"]),
            at_most=None if data.get("at_most") is None else float(data["at_most"]),
            analyzer=str(data["analyzer"]),
        )


@dataclass(frozen=True)
class Decision:
    """A study's triage decision: the level shown and how it came about.

    Attributes
    ----------
    level:
        The effective level (what the label shows).
    computed_level:
        What this run alone gave (lower than ``level`` when ``held``).
    reasons:
        The names of the rules that fired at ``level``, or the not-analyzed/pending reason; a held
        decision keeps the previous reasons and adds one note starting ``held:``.
    evidence:
        One item per value that made a rule fire (of the decision that set ``level``).
    held:
        True when ``level`` was kept from a previous, higher decision.
    computed_reasons:
        The reasons of ``computed_level`` (equal to ``reasons`` unless held).
    """

    level: Level
    computed_level: Level
    reasons: tuple[str, ...]
    evidence: tuple[Evidence, ...]
    policy_version: str
    policy_sha256: str
    mode: Mode
    held: bool
    decided_at: str
    acknowledged_by: Optional[str] = None
    acknowledged_at: Optional[str] = None
    computed_reasons: tuple[str, ...] = field(default=())

    @property
    def acknowledged(self) -> bool:
        """Whether a person has acknowledged this decision."""
        return self.acknowledged_by is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-able form; :meth:`from_json` restores an equal decision."""
        return {
            "level": self.level.value,
            "computed_level": self.computed_level.value,
            "reasons": list(self.reasons),
            "computed_reasons": list(self.computed_reasons),
            "evidence": [e.to_json() for e in self.evidence],
            "policy_version": self.policy_version,
            "policy_sha256": self.policy_sha256,
            "mode": self.mode.value,
            "held": self.held,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at,
            "decided_at": self.decided_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        ValueError
            For an unknown level or mode; ``KeyError`` for a missing field.
        """
        return cls(
            level=Level(data["level"]),
            computed_level=Level(data["computed_level"]),
            reasons=tuple(str(r) for r in data["reasons"]),
            computed_reasons=tuple(str(r) for r in data.get("computed_reasons", ())),
            evidence=tuple(Evidence.from_json(e) for e in data["evidence"]),
            policy_version=str(data["policy_version"]),
            policy_sha256=str(data["policy_sha256"]),
            mode=Mode(data["mode"]),
            held=bool(data["held"]),
            acknowledged_by=None if data.get("acknowledged_by") is None else str(data["acknowledged_by"]),
            acknowledged_at=None if data.get("acknowledged_at") is None else str(data["acknowledged_at"]),
            decided_at=str(data["decided_at"]),
        )


def _iso(now: datetime) -> str:
    if not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, got {type(now).__name__}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now.astimezone(UTC).isoformat()


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _is_trained(summary: Any) -> bool:
    """A summary counts only when it says ``analyzer.untrained`` is false (missing: untrained)."""
    analyzer = summary.get("analyzer") if isinstance(summary, Mapping) else None
    return isinstance(analyzer, Mapping) and analyzer.get("untrained") is False


def _values(rule: Rule, name: str, summary: Mapping[str, Any]) -> list[tuple[float, str]]:
    """The rule's target values in one analyzer summary, as (value, unit)."""
    out = []
    if rule.finding is not None:
        for item in summary.get("findings") or ():
            if isinstance(item, Mapping) and item.get("name") == rule.finding:
                value = _number(item.get("probability"))
                if value is not None:
                    out.append((value, PROBABILITY_UNIT))
    else:
        for item in summary.get("measurements") or ():
            if isinstance(item, Mapping) and item.get("name") == rule.measurement:
                value = _number(item.get("value"))
                if value is not None:
                    out.append((value, str(item.get("unit", ""))))
    return out


def _computed(
    policy: TriagePolicy, results: Optional[Mapping[str, Any]], outcome: Outcome, reason: Optional[str]
) -> tuple[Level, tuple[str, ...], tuple[Evidence, ...]]:
    """This run's level, reasons and evidence, before the never-down rule."""
    if outcome is Outcome.PENDING:
        return Level.PENDING, (f"pending: {reason}" if reason else "pending",), ()
    if outcome is not Outcome.SUCCEEDED:
        return Level.NOT_ANALYZED, (f"{outcome.value}: {reason}" if reason else outcome.value,), ()
    summaries = results.get("results") if isinstance(results, Mapping) else None
    if not isinstance(summaries, Mapping) or not summaries:
        return Level.NOT_ANALYZED, ("no analyzer results",), ()
    trained = {str(k): v for k, v in summaries.items() if _is_trained(v)}
    untrained = {str(k): v for k, v in summaries.items() if not _is_trained(v) and isinstance(v, Mapping)}
    if not trained:
        return Level.NOT_ANALYZED, (f"untrained release: {', '.join(sorted(untrained)) or 'no usable results'}",), ()
    fired: list[tuple[Rule, Evidence]] = []
    applicable: set[str] = set()
    for rule in policy.rules:
        for name, summary in trained.items():
            if not analyzer_in_scope(rule.analyzer, name):
                continue
            for value, unit in _values(rule, name, summary):
                applicable.add(rule.name)
                if rule.matches(value):
                    fired.append(
                        (
                            rule,
                            Evidence(
                                rule.name, rule.level, rule.kind, rule.target, value, unit, rule.low, rule.at_most, name
                            ),
                        )
                    )
    if fired:
        top = max(rule.level.rank for rule, _ in fired)
        level = next(rule.level for rule, _ in fired if rule.level.rank == top)
        names = tuple(dict.fromkeys(rule.name for rule, _ in fired if rule.level is level))
        evidence = tuple(e for _, e in sorted(fired, key=lambda pair: -pair[0].level.rank))
        return level, names, evidence
    untrained_only = [
        rule.name
        for rule in policy.rules
        if rule.name not in applicable
        and any(analyzer_in_scope(rule.analyzer, name) and _values(rule, name, s) for name, s in untrained.items())
    ]
    if untrained_only:
        return (
            Level.NOT_ANALYZED,
            (f"untrained release: only untrained output for rules {', '.join(untrained_only)}",),
            (),
        )
    if policy.rules and not applicable:
        return (
            Level.NOT_ANALYZED,
            ("no rule could decide: the results hold none of the rules' findings or measurements",),
            (),
        )
    return Level.ROUTINE, (), ()


def decide(
    policy: TriagePolicy,
    results: Optional[Mapping[str, Any]],
    outcome: Outcome,
    previous: Optional[Decision],
    *,
    now: datetime,
    reason: Optional[str] = None,
) -> Decision:
    """Decide a study's triage level from one run, never lowering an unacknowledged earlier level.

    Parameters
    ----------
    policy:
        The policy in force.
    results:
        The study's ``results.json`` document (``results`` maps analyzer name to its summary with
        ``analyzer.untrained``, ``findings`` and ``measurements``); ``None`` when there is none.
    outcome:
        How the job ended.
    previous:
        The study's last decision, if any.
    now:
        The decision time (timezone-aware).
    reason:
        Why the job did not succeed (the job's error message), for the not-analyzed reason.

    Returns
    -------
    Decision
        Deterministic for equal arguments.
    """
    if not isinstance(outcome, Outcome):
        raise TypeError(f"outcome must be an Outcome, got {type(outcome).__name__}")
    decided_at = _iso(now)
    level, reasons, evidence = _computed(policy, results, outcome, reason)
    hold = previous is not None and (
        (previous.level.decided and not level.decided)
        or (previous.level.rank > level.rank and not previous.acknowledged)
    )
    if previous is not None and hold:
        kept = tuple(r for r in previous.reasons if not r.startswith(HELD_NOTE))
        what = ", ".join(reasons) if reasons else "no rule fired"
        note = f"{HELD_NOTE} kept {previous.level.value}; this run gave {level.value} ({what})"
        return Decision(
            level=previous.level,
            computed_level=level,
            reasons=(*kept, note),
            evidence=previous.evidence,
            held=True,
            acknowledged_by=previous.acknowledged_by,
            acknowledged_at=previous.acknowledged_at,
            computed_reasons=reasons,
            policy_version=policy.version,
            policy_sha256=policy.sha256,
            mode=policy.mode,
            decided_at=decided_at,
        )
    # An acknowledgement carries over only to the same decision in substance (same level, same
    # reasons): a new reason at the same level is new to the reader.
    seen = previous if previous is not None and previous.level is level and previous.reasons == reasons else None
    return Decision(
        level=level,
        computed_level=level,
        reasons=reasons,
        evidence=evidence,
        held=False,
        acknowledged_by=seen.acknowledged_by if seen is not None else None,
        acknowledged_at=seen.acknowledged_at if seen is not None else None,
        computed_reasons=reasons,
        policy_version=policy.version,
        policy_sha256=policy.sha256,
        mode=policy.mode,
        decided_at=decided_at,
    )


def acknowledge(decision: Decision, who: str, now: datetime) -> Decision:
    """Record that a person has seen the decision; this releases a hold at the next :func:`decide`.

    The first acknowledgement counts: acknowledging an acknowledged decision returns it unchanged.

    Parameters
    ----------
    decision:
        The study's current decision.
    who:
        The person (user name or token subject), not empty.
    now:
        When (timezone-aware).

    Returns
    -------
    Decision
    """
    if not isinstance(who, str) or not who.strip():
        raise ValueError("who must name the person who acknowledges")
    when = _iso(now)
    if decision.acknowledged:
        return decision
    return replace(decision, acknowledged_by=who.strip(), acknowledged_at=when)
