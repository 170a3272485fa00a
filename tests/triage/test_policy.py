"""The triage policy: every validation error with its line, the shipped default, the live store."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from neuroradix.analyzers.densitometry import Densitometry, DensityStats, density_measurements, lung_codes
from neuroradix.triage.policy import (
    Level,
    Mode,
    PolicyError,
    PolicyStore,
    Rule,
    analyzer_in_scope,
    default_policy_path,
    finding_names,
    load_default_policy,
    load_policy,
    parse_policy,
)
from tests.triage.policies import HEAD, ISSUE_EXAMPLE


def test_the_issue_example_parses():
    policy = parse_policy(ISSUE_EXAMPLE)
    assert policy.version == "site-2026-12-01"
    assert policy.mode is Mode.ACTIVE
    assert (policy.escalate_after_minutes, policy.max_wait_minutes) == (30.0, 60.0)
    emphysema, effusion = policy.rules
    assert emphysema == Rule("severe emphysema", Level.PRIORITY, measurement="Total LAA-950", at_least=15.0)
    assert effusion == Rule(
        "pleural effusion", Level.URGENT, finding="Pleural effusion", probability_at_least=0.8, analyzer="deep"
    )
    assert re.fullmatch(r"[0-9a-f]{64}", policy.sha256)
    assert parse_policy(ISSUE_EXAMPLE + "\n").sha256 != policy.sha256  # the sha256 is of the exact text


# (yaml, line, part of the reason): each error names the line of the offending key or value.
ERRORS = [
    ("", 1, "empty"),
    ("- a\n- b\n", 1, "must be a mapping"),
    ("version: [\n", 2, "not valid YAML"),
    ('version: "v1"\nmode: active\nescalate_after_minutes: 30\nrules: []\n', 1, "missing 'max_wait_minutes'"),
    (HEAD.replace("mode: active", "mode: loud"), 2, "mode must be one of active, shadow"),
    (HEAD.replace("escalate_after_minutes: 30", "escalate_after_minutes: -1"), 3, "must not be negative"),
    (HEAD.replace("max_wait_minutes: 60", "max_wait_minutes: -5"), 4, "must not be negative"),
    (HEAD.replace("max_wait_minutes: 60", "max_wait_minutes: soon"), 4, "must be a finite number"),
    (HEAD.replace('version: "v1"', "version: 2026-12-01"), 1, "version must be text (quote it)"),
    (HEAD + "  []\nextra: 1\n", 7, "unknown key 'extra'"),
    (HEAD.replace("mode: active\n", "mode: active\nmode: shadow\n"), 3, "given twice"),
    (HEAD.replace("rules:\n", "rules: {}\n"), 5, "rules must be a list"),
    (
        HEAD
        + "  - name: x\n    level: urgent\n    finding: Emphysema\n    probability_at_least: 0.5\n    colour: red\n",
        10,
        "unknown key 'colour'",
    ),
    (HEAD + "  - level: urgent\n    finding: Emphysema\n    probability_at_least: 0.5\n", 6, "missing 'name'"),
    (
        HEAD + "  - name: x\n    level: critical\n    finding: Emphysema\n    probability_at_least: 0.5\n",
        7,
        "level must be one of",
    ),
    (
        HEAD + "  - name: x\n    level: pending\n    finding: Emphysema\n    probability_at_least: 0.5\n",
        7,
        "not the state 'pending'",
    ),
    (
        HEAD + "  - name: x\n    level: not-analyzed\n    finding: Emphysema\n    probability_at_least: 0.5\n",
        7,
        "not the state 'not-analyzed'",
    ),
    (
        HEAD + "  - name: x\n    level: urgent\n    finding: Emphysema\n    measurement: Total LAA-950\n"
        "    probability_at_least: 0.5\n",
        8,
        "exactly one of 'finding' or 'measurement'",
    ),
    (HEAD + "  - name: x\n    level: urgent\n    at_least: 3\n", 6, "exactly one of 'finding' or 'measurement'"),
    (
        HEAD + "  - name: x\n    level: urgent\n    finding: Pneumothorax\n    probability_at_least: 0.5\n",
        8,
        "unknown finding 'Pneumothorax'",
    ),
    (HEAD + "  - name: x\n    level: urgent\n    finding: Emphysema\n", 8, "needs 'probability_at_least'"),
    (
        HEAD + "  - name: x\n    level: urgent\n    finding: Emphysema\n    probability_at_least: 1.5\n",
        9,
        "must lie in 0..1",
    ),
    (
        HEAD + "  - name: x\n    level: urgent\n    finding: Emphysema\n    probability_at_least: -0.1\n",
        9,
        "must lie in 0..1",
    ),
    (
        HEAD
        + "  - name: x\n    level: urgent\n    finding: Emphysema\n    probability_at_least: 0.5\n    at_least: 3\n",
        10,
        "'at_least' is for measurements",
    ),
    (
        HEAD + "  - name: x\n    level: urgent\n    measurement: Total LAA-950\n    probability_at_least: 0.5\n",
        9,
        "'probability_at_least' is for findings",
    ),
    (HEAD + "  - name: x\n    level: urgent\n    measurement: Total LAA-950\n", 8, "needs 'at_least', 'at_most'"),
    (
        HEAD + "  - name: x\n    level: urgent\n    measurement: Total LAA-950\n    at_least: 20\n    at_most: 10\n",
        9,
        "greater than at_most",
    ),
    (HEAD + "  - name: x\n    level: urgent\n    measurement: Total LAA-950\n    at_least: .nan\n", 9, "finite number"),
    (HEAD + "  - name: x\n    level: urgent\n    measurement: Total LAA-950\n    at_least: true\n", 9, "finite number"),
    (
        HEAD + "  - name: x\n    level: urgent\n    measurement: Total LAA-950\n    at_least: 1\n    analyzer: lung\n",
        10,
        "unknown analyzer 'lung'",
    ),
    (
        HEAD + "  - name: x\n    level: urgent\n    measurement: Total LAA-950\n    at_least: 1\n"
        "  - name: x\n    level: routine\n    measurement: Total LAA-950\n    at_most: 1\n",
        10,
        "used twice (first on line 6)",
    ),
    (
        HEAD + '  - name: "caf\u00e9"\n    level: urgent\n    measurement: Total LAA-950\n    at_least: 1\n',
        6,
        "printable ASCII",
    ),
    (
        HEAD + "  - name: [a]\n    level: urgent\n    measurement: Total LAA-950\n    at_least: 1\n",
        6,
        "must be a single value",
    ),
    (HEAD + "  - name: !!python/name:os.system\n    level: urgent\n", 6, "not valid YAML"),
]


@pytest.mark.parametrize(("text", "line", "reason"), ERRORS)
def test_each_error_names_its_line_and_reason(text, line, reason):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="site.yaml")
    err = info.value
    assert reason in err.reason
    assert err.line == line, err
    assert str(err) == f"site.yaml:{line}: {err.reason}"
    assert isinstance(err, ValueError)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "  - name: x\n    level: urgent\n    finding: Emphysema\n    probability_at_least: 2\n")
    with pytest.raises(PolicyError, match=rf"^{re.escape(str(path))}:9: "):
        load_policy(path)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    path.write_bytes(HEAD.encode() + b"  - name: \xff\n")
    with pytest.raises(PolicyError, match=r":6: the policy is not UTF-8"):
        load_policy(path)


def test_rule_checks_its_fields_when_built_in_code():
    with pytest.raises(ValueError, match="exactly one"):
        Rule("x", Level.URGENT)
    with pytest.raises(ValueError, match="not the state"):
        Rule("x", Level.PENDING, measurement="m", at_least=1)
    with pytest.raises(TypeError, match="Level"):
        Rule("x", "urgent", measurement="m", at_least=1)  # type: ignore[arg-type]


def test_rule_thresholds_are_inclusive():
    rule = Rule("r", Level.PRIORITY, measurement="m", at_least=10, at_most=20)
    assert [rule.matches(v) for v in (9.99, 10, 15, 20, 20.01)] == [False, True, True, True, False]
    low = Rule("p", Level.URGENT, finding="Emphysema", probability_at_least=0.8)
    assert (low.matches(0.8), low.matches(0.79)) == (True, False)


def test_finding_names_are_the_packaged_catalogue():
    names = finding_names()
    assert len(names) == 19 and "Pleural effusion" in names and "Abnormal" in names


def test_analyzer_scope():
    assert analyzer_in_scope(None, "lung-hu")
    assert analyzer_in_scope("lung-hu", "lung-hu") and not analyzer_in_scope("lung-hu", "swinunetr-ctrate")
    assert analyzer_in_scope("deep", "swinunetr-ctrate") and analyzer_in_scope("deep", "merlin-ctrate")
    assert not analyzer_in_scope("deep", "lung-hu")
    assert analyzer_in_scope("merlin-ctrate", "merlin-ctrate") and not analyzer_in_scope(
        "merlin-ctrate", "astra-ctrate"
    )


def test_levels_rank_and_label():
    assert sorted(Level, key=lambda lv: lv.rank) == [
        Level.PENDING,
        Level.NOT_ANALYZED,
        Level.ROUTINE,
        Level.PRIORITY,
        Level.URGENT,
    ]
    assert [lv.label for lv in Level] == ["ai-urgent", "ai-priority", "ai-routine", "ai-pending", "ai-not-analyzed"]
    assert {lv for lv in Level if lv.decided} == {Level.URGENT, Level.PRIORITY, Level.ROUTINE}
    assert Level("not-analyzed") is Level.NOT_ANALYZED


# -- the shipped default ---------------------------------------------------------------------------


def test_shipped_default_is_conservative():
    path = default_policy_path()
    assert path.name == "default-policy.yaml" and path.is_file()
    policy = load_default_policy()
    assert policy.mode is Mode.ACTIVE
    assert policy.source_path == path
    # the lung analyzer alone never raises above routine
    assert all(r.level.rank <= Level.ROUTINE.rank for r in policy.rules if r.analyzer in (None, "lung-hu"))


def _uncommented_examples(text: str) -> str:
    head, _, examples = text.partition("rules: []\n")
    lines = [ln[2:] for ln in examples.splitlines() if ln.startswith("# ") and not ln.startswith("# Examples")]
    return head + "\n".join(lines) + "\n"


def test_shipped_examples_are_valid_and_map_deep_findings_and_densitometry():
    policy = parse_policy(_uncommented_examples(default_policy_path().read_text()))
    by_name = {r.name: r for r in policy.rules}
    effusion = by_name["pleural effusion"]
    assert (effusion.level, effusion.finding, effusion.probability_at_least, effusion.analyzer) == (
        Level.URGENT,
        "Pleural effusion",
        0.8,
        "deep",
    )
    emphysema = by_name["severe emphysema"]
    assert (emphysema.level, emphysema.measurement, emphysema.analyzer) == (Level.PRIORITY, "Total LAA-950", "lung-hu")


def test_shipped_example_measurement_names_are_what_the_lung_analyzer_writes():
    regions = {
        (side, zone): DensityStats(1000, 900.0, 4.0, 9.0, -930.0, -860.0)
        for side in ("right", "left")
        for zone in (None, "upper", "middle", "lower")
    }
    regions[("both", None)] = DensityStats(2000, 1800.0, 5.5, 10.5, -925.0, -858.0)
    written = {
        m.name for m in density_measurements(Densitometry(regions, 42, 1.3), lung_codes(), {"left": 2, "right": 3})
    }
    examples = parse_policy(_uncommented_examples(default_policy_path().read_text()))
    used = {r.measurement for r in examples.rules if r.measurement is not None}
    assert used and used <= written
    named_in_comments = set(
        re.findall(r'"([^"]+)"', default_policy_path().read_text().split("by the names it writes")[1])
    )
    assert named_in_comments - {"..."} <= written


# -- the live store ------------------------------------------------------------------------------


def _write(path: Path, version: str, extra_rule: str = "") -> None:
    """Replace ``path`` the way ``triage set`` does (a new file renamed over the old one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(HEAD.replace('"v1"', f'"{version}"') + (extra_rule or "  []\n").replace("rules:\n", ""))
    os.replace(tmp, path)


def test_store_without_a_file_uses_the_default(tmp_path):
    assert PolicyStore(None).current() == load_default_policy()
    assert PolicyStore(tmp_path / "none.yaml").current().version == load_default_policy().version


def test_store_reloads_a_changed_file(tmp_path):
    path = tmp_path / "triage-policy.yaml"
    _write(path, "v1")
    store = PolicyStore(path)
    assert store.current().version == "v1"
    assert store.current() is store.current()  # not reloaded while unchanged
    _write(path, "v2", "  - name: big\n    level: priority\n    measurement: Total LAA-950\n    at_least: 15\n")
    policy = store.current()
    assert policy.version == "v2" and [r.name for r in policy.rules] == ["big"]
    path.unlink()
    assert store.current() == load_default_policy()
    _write(path, "v3")
    assert store.current().version == "v3"


def test_store_keeps_the_last_good_policy_when_the_file_breaks(tmp_path, caplog):
    path = tmp_path / "triage-policy.yaml"
    _write(path, "good")
    store = PolicyStore(path)
    good = store.current()
    path.write_text(HEAD + "  - name: x\n    level: urgent\n")  # rewritten in place: size and mtime change
    with caplog.at_level(logging.ERROR, logger="neuroradix.triage.policy"):
        assert store.current() is good
    assert store.last_error is not None and store.last_error.line == 6
    assert any("last good one (version good) stays" in r.getMessage() for r in caplog.records)
    _write(path, "fixed")
    assert store.current().version == "fixed" and store.last_error is None


def test_store_refuses_a_broken_file_at_start(tmp_path):
    path = tmp_path / "triage-policy.yaml"
    path.write_text("mode: shadow\n")
    with pytest.raises(PolicyError, match="missing 'version'"):
        PolicyStore(path)
