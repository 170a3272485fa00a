"""The triage policy, kept as data: a YAML file a site edits, versions and installs.

Format::

    version: "site-2026-12-01"
    mode: active                 # or shadow: decide and record, but label and notify nothing
    escalate_after_minutes: 30
    max_wait_minutes: 60
    rules:
      - name: severe emphysema
        level: priority
        measurement: "Total LAA-950"   # exact name in results.json
        at_least: 15
      - name: pleural effusion
        level: urgent
        finding: "Pleural effusion"    # a CT-RATE finding name (or "Abnormal")
        probability_at_least: 0.8
        analyzer: deep                 # optional

Every key is checked when the file is loaded; a mistake raises :class:`PolicyError` naming the
file, the 1-based line and the reason (the YAML is composed into its node tree first, so each key
and value keeps its line). The parser is PyYAML's; the checks are ours, since no schema library
reports YAML lines.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml
from yaml.constructor import SafeConstructor

from neuroradix.config import ANALYZER_NAMES
from neuroradix.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "DEEP_ANALYZER",
    "Level",
    "Mode",
    "PolicyError",
    "PolicyStore",
    "Rule",
    "TriagePolicy",
    "analyzer_in_scope",
    "default_policy_path",
    "finding_names",
    "load_default_policy",
    "load_policy",
    "parse_policy",
]

#: The analyzer scope that stands for every deep-learning analyzer: their results are named
#: ``<encoder>-ctrate`` (``swinunetr-ctrate``, ``merlin-ctrate`` ...), the setting is ``deep``.
DEEP_ANALYZER = "deep"
_DEEP_RESULT_NAME = re.compile(r"[a-z0-9][a-z0-9-]*-ctrate")
_TEXT = re.compile(r"[ -~]{1,64}")  # printable ASCII: the texts go into the SR, HL7 and FHIR


class Level(str, enum.Enum):
    """A study's triage level (the three decided levels) or state (pending, not analyzed).

    :attr:`rank` orders them: urgent 4 > priority 3 > routine 2 > not-analyzed 1 > pending 0.
    A decided level always outranks a state: a study the AI has read (even as routine) carries
    more information than one it has not, so a failed or queued rerun never replaces a decision.
    Among the states, not-analyzed outranks pending because it needs a person and pending does not
    (yet).
    """

    URGENT = "urgent"
    PRIORITY = "priority"
    ROUTINE = "routine"
    PENDING = "pending"
    NOT_ANALYZED = "not-analyzed"

    @property
    def rank(self) -> int:
        """Order of precedence: urgent 4, priority 3, routine 2, not-analyzed 1, pending 0."""
        return _RANKS[self]

    @property
    def label(self) -> str:
        """The Orthanc study label that shows this level, e.g. ``ai-urgent``."""
        return f"ai-{self.value}"

    @property
    def decided(self) -> bool:
        """True for urgent, priority and routine (a decision), False for the two states."""
        return self.rank >= _RANKS[Level.ROUTINE]


_RANKS = {Level.URGENT: 4, Level.PRIORITY: 3, Level.ROUTINE: 2, Level.NOT_ANALYZED: 1, Level.PENDING: 0}


class Mode(str, enum.Enum):
    """``active``: label and notify; ``shadow``: decide, record and count, but label and notify nothing."""

    ACTIVE = "active"
    SHADOW = "shadow"


class PolicyError(ConfigError, ValueError):
    """A triage policy that cannot be used: ``str(e)`` is ``"FILE:LINE: reason"``.

    Attributes
    ----------
    source:
        The file (or ``"<string>"``).
    line:
        1-based line in the YAML where the problem is.
    reason:
        What is wrong, for a person.
    """

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


@lru_cache(maxsize=1)
def finding_names() -> frozenset[str]:
    """The finding names a rule may use: the 18 CT-RATE findings and "Abnormal".

    Read from the packaged catalogue ``data/findings/ct-rate-18.json`` (the file the deep
    analyzer names its outputs from, see :mod:`neuroradix.models.findings`).
    """
    ref = resources.files("neuroradix") / "data" / "findings" / "ct-rate-18.json"
    try:
        data = json.loads(ref.read_text(encoding="utf-8"))
        names = [str(e["name"]) for e in data["findings"]] + [str(data["abnormal"]["name"])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"data/findings/ct-rate-18.json cannot be read: {exc}") from exc
    return frozenset(names)


def analyzer_in_scope(scope: Optional[str], name: str) -> bool:
    """Whether the results of analyzer ``name`` (a key of ``results.json``'s ``results``) are in ``scope``.

    Parameters
    ----------
    scope:
        A rule's ``analyzer``: ``None`` (every analyzer), ``deep`` (every ``*-ctrate`` analyzer)
        or an analyzer's exact name (``lung-hu``, ``swinunetr-ctrate`` ...).
    name:
        The analyzer that produced a result.

    Returns
    -------
    bool
    """
    if scope is None or scope == name:
        return True
    return scope == DEEP_ANALYZER and _DEEP_RESULT_NAME.fullmatch(name) is not None


def _valid_scope(scope: str) -> bool:
    return scope in ANALYZER_NAMES or _DEEP_RESULT_NAME.fullmatch(scope) is not None


def _rule_problem(
    level: Level,
    finding: Optional[str],
    measurement: Optional[str],
    probability_at_least: Optional[float],
    at_least: Optional[float],
    at_most: Optional[float],
) -> Optional[tuple[str, str]]:
    """The first problem of a rule's fields as ``(field, reason)``, or ``None``."""
    if not level.decided:
        return "level", f"a rule sets urgent, priority or routine, not the state {level.value!r}"
    if (finding is None) == (measurement is None):
        return "finding", "a rule names exactly one of 'finding' or 'measurement'"
    if finding is not None:
        if finding not in finding_names():
            return "finding", f"unknown finding {finding!r}: use one of {sorted(finding_names())}"
        for key, value in (("at_least", at_least), ("at_most", at_most)):
            if value is not None:
                return key, f"'{key}' is for measurements; a finding rule uses 'probability_at_least'"
        if probability_at_least is None:
            return "finding", "a finding rule needs 'probability_at_least'"
        if not 0.0 <= probability_at_least <= 1.0:
            return "probability_at_least", f"probability_at_least must lie in 0..1, got {probability_at_least}"
        return None
    if probability_at_least is not None:
        return (
            "probability_at_least",
            "'probability_at_least' is for findings; a measurement rule uses at_least/at_most",
        )
    if at_least is None and at_most is None:
        return "measurement", "a measurement rule needs 'at_least', 'at_most' or both"
    if at_least is not None and at_most is not None and at_least > at_most:
        return "at_least", f"at_least ({at_least}) is greater than at_most ({at_most}): nothing can match"
    return None


@dataclass(frozen=True)
class Rule:
    """One rule: a finding's probability or a measurement's value that sets a level.

    A finding rule fires when the finding's probability is at or above
    ``probability_at_least``; a measurement rule when the value is at or above ``at_least``
    and at or below ``at_most`` (either may be left out). ``analyzer`` limits the rule to one
    analyzer's results (see :func:`analyzer_in_scope`).

    Raises
    ------
    ValueError
        When the fields do not make a rule (both or neither of finding/measurement, thresholds
        that do not fit the kind, a probability outside 0..1, ``at_least > at_most``, a state as
        the level, an unknown finding).
    """

    name: str
    level: Level
    finding: Optional[str] = None
    measurement: Optional[str] = None
    probability_at_least: Optional[float] = None
    at_least: Optional[float] = None
    at_most: Optional[float] = None
    analyzer: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.level, Level):
            raise TypeError(f"level must be a Level, got {type(self.level).__name__}")
        problem = _rule_problem(
            self.level, self.finding, self.measurement, self.probability_at_least, self.at_least, self.at_most
        )
        if problem is not None:
            raise ValueError(f"rule {self.name!r}: {problem[1]}")

    @property
    def kind(self) -> str:
        """``"finding"`` or ``"measurement"``."""
        return "finding" if self.finding is not None else "measurement"

    @property
    def target(self) -> str:
        """The finding or measurement name the rule reads."""
        return self.finding if self.finding is not None else str(self.measurement)

    @property
    def low(self) -> Optional[float]:
        """The lower bound (``probability_at_least`` or ``at_least``), if any."""
        return self.probability_at_least if self.finding is not None else self.at_least

    def matches(self, value: float) -> bool:
        """Whether ``value`` (a probability or a measurement) meets the rule's threshold(s)."""
        low, high = self.low, self.at_most
        return (low is None or value >= low) and (high is None or value <= high)


@dataclass(frozen=True)
class TriagePolicy:
    """A validated policy; ``sha256`` is of the file's bytes, so a decision names exactly what decided it."""

    version: str
    mode: Mode
    escalate_after_minutes: float
    max_wait_minutes: float
    rules: tuple[Rule, ...]
    sha256: str
    source_path: Optional[Path] = None


# -- parsing -----------------------------------------------------------------------------------

_TOP_KEYS = ("version", "mode", "escalate_after_minutes", "max_wait_minutes", "rules")
_RULE_KEYS = ("name", "level", "finding", "measurement", "probability_at_least", "at_least", "at_most", "analyzer")


class _Parser:
    """Walks the composed YAML node tree, building values and raising :class:`PolicyError` at a line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = SafeConstructor()

    def fail(self, node: Optional[yaml.Node], reason: str) -> PolicyError:
        line = node.start_mark.line + 1 if node is not None else 1
        return PolicyError(self.source, line, reason)

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping of keys to values")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag != "tag:yaml.org,2002:str":
                raise self.fail(key, f"{what}: keys must be plain names")
            if key.value not in allowed:
                raise self.fail(key, f"{what}: unknown key {key.value!r} (allowed: {', '.join(allowed)})")
            if key.value in out:
                raise self.fail(key, f"{what}: key {key.value!r} given twice")
            out[key.value] = (key, value)
        return out

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        return self.constructor.construct_object(node, deep=True)

    def text(self, node: yaml.Node, what: str) -> str:
        value = self.scalar(node, what)
        if not isinstance(value, str):
            raise self.fail(node, f"{what} must be text (quote it), got {value!r}")
        if not _TEXT.fullmatch(value):
            raise self.fail(node, f"{what} must be 1-64 printable ASCII characters, got {value!r}")
        return value

    def number(self, node: yaml.Node, what: str) -> float:
        value = self.scalar(node, what)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(node, f"{what} must be a finite number, got {value!r}")
        return float(value)

    def minutes(self, node: yaml.Node, what: str) -> float:
        value = self.number(node, what)
        if value < 0:
            raise self.fail(node, f"{what} must not be negative, got {value:g}")
        return value

    def choice(self, node: yaml.Node, what: str, enum_type: type[enum.Enum]) -> Any:
        value = self.scalar(node, what)
        try:
            return enum_type(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in enum_type)
            raise self.fail(node, f"{what} must be one of {allowed}, got {value!r}") from None

    def rule(self, node: yaml.Node, index: int) -> Rule:
        where = f"rules[{index}]"
        keys = self.mapping(node, where, _RULE_KEYS)
        for required in ("name", "level"):
            if required not in keys:
                raise self.fail(node, f"{where}: missing {required!r}")
        name = self.text(keys["name"][1], f"{where}.name")
        where = f"rule {name!r}"
        level = self.choice(keys["level"][1], f"{where}: level", Level)
        fields: dict[str, Any] = {"name": name, "level": level}
        for key in ("finding", "measurement", "analyzer"):
            if key in keys:
                fields[key] = self.text(keys[key][1], f"{where}: {key}")
        for key in ("probability_at_least", "at_least", "at_most"):
            if key in keys:
                fields[key] = self.number(keys[key][1], f"{where}: {key}")
        if "analyzer" in fields and not _valid_scope(fields["analyzer"]):
            raise self.fail(
                keys["analyzer"][1],
                f"{where}: unknown analyzer {fields['analyzer']!r}: use one of {', '.join(ANALYZER_NAMES)} "
                "or a deep analyzer's result name (e.g. swinunetr-ctrate)",
            )
        problem = _rule_problem(
            level,
            fields.get("finding"),
            fields.get("measurement"),
            fields.get("probability_at_least"),
            fields.get("at_least"),
            fields.get("at_most"),
        )
        if problem is not None:
            field, reason = problem
            at = keys[field][1] if field in keys else node
            raise self.fail(at, f"{where}: {reason}")
        return Rule(**fields)

    def policy(self, root: Optional[yaml.Node], sha256: str) -> TriagePolicy:
        if root is None:
            raise self.fail(None, "the policy is empty")
        keys = self.mapping(root, "the policy", _TOP_KEYS)
        for required in _TOP_KEYS:
            if required not in keys:
                raise self.fail(root, f"missing {required!r}")
        version = self.text(keys["version"][1], "version")
        mode = self.choice(keys["mode"][1], "mode", Mode)
        escalate = self.minutes(keys["escalate_after_minutes"][1], "escalate_after_minutes")
        max_wait = self.minutes(keys["max_wait_minutes"][1], "max_wait_minutes")
        rules_node = keys["rules"][1]
        if not isinstance(rules_node, yaml.SequenceNode):
            raise self.fail(rules_node, "rules must be a list (use [] for none)")
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(rules_node.value):
            rule = self.rule(item, index)
            if rule.name in seen:
                raise self.fail(item, f"rule name {rule.name!r} is used twice (first on line {seen[rule.name]})")
            seen[rule.name] = item.start_mark.line + 1
            rules.append(rule)
        return TriagePolicy(version, mode, escalate, max_wait, tuple(rules), sha256)


def parse_policy(text: str, source: str = "<string>") -> TriagePolicy:
    """Parse and validate a policy's YAML text.

    Parameters
    ----------
    text:
        The YAML document.
    source:
        Where it came from, for messages.

    Returns
    -------
    TriagePolicy
        With ``sha256`` of the UTF-8 text and no ``source_path``.

    Raises
    ------
    PolicyError
        On a YAML syntax error or any invalid key or value, with its line.
    """
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    parser = _Parser(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        return parser.policy(root, sha)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise PolicyError(source, line, f"not valid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(source, 1, f"not valid YAML: {exc}") from exc


def load_policy(path: Path | str) -> TriagePolicy:
    """Load and validate the policy file ``path``.

    Returns
    -------
    TriagePolicy
        With ``sha256`` of the file's bytes and ``source_path`` set.

    Raises
    ------
    PolicyError
        When the file cannot be read, is not UTF-8, or is not a valid policy.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(str(path), 1, f"cannot read the policy: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PolicyError(str(path), line, "the policy is not UTF-8 text") from exc
    policy = parse_policy(text, source=str(path))
    return replace(policy, source_path=path)


POLICY_FILENAME = "triage-policy.yaml"  # where `neuroradix triage set` installs a site's policy in var/


def node_policy_path(var_dir: Path | str, configured: Optional[Path] = None) -> Path:
    """The policy file a node watches: ``NEURORADIX_TRIAGE_POLICY`` when set, else ``VAR/triage-policy.yaml``.

    When that file does not exist, :class:`PolicyStore` uses the shipped default.
    """
    return Path(configured) if configured is not None else Path(var_dir) / POLICY_FILENAME


def default_policy_path() -> Path:
    """The shipped conservative policy, ``neuroradix/data/triage/default-policy.yaml``."""
    return Path(str(resources.files("neuroradix") / "data" / "triage" / "default-policy.yaml"))


@lru_cache(maxsize=1)
def load_default_policy() -> TriagePolicy:
    """The shipped policy, validated (once per process)."""
    return load_policy(default_policy_path())


# -- the live policy ---------------------------------------------------------------------------


class PolicyStore:
    """The current policy of a running node, reloaded when its file changes.

    ``neuroradix triage set`` replaces the file atomically; the next :meth:`current` sees the new
    inode/mtime/size and loads it, so no restart is needed. Without a file (``path`` is ``None`` or
    does not exist) the shipped default applies. A file that is broken when it is *reloaded* leaves
    the last good policy in force and logs the error (:attr:`last_error` keeps it); a broken file at
    construction raises, so a node refuses to start on a policy it cannot read.

    Parameters
    ----------
    path:
        The site's policy file (``var/triage-policy.yaml`` or ``NEURORADIX_TRIAGE_POLICY``).

    Raises
    ------
    PolicyError
        When the file exists at construction and is invalid.
    """

    def __init__(self, path: Optional[Path]) -> None:
        self.path = Path(path) if path is not None else None
        self.last_error: Optional[PolicyError] = None
        self._lock = threading.Lock()
        self._signature: Optional[tuple[int, int, int, int]] = None
        self._policy = self._load_now(strict=True)

    def _stat(self) -> Optional[tuple[int, int, int, int]]:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _load_now(self, strict: bool) -> TriagePolicy:
        signature = self._stat()
        self._signature = signature
        if signature is None or self.path is None:
            return load_default_policy()
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            if strict:
                raise
            self.last_error = exc
            logger.error(
                "triage policy not reloaded, the last good one (version %s) stays: %s", self._policy.version, exc
            )
            return self._policy
        self.last_error = None
        return policy

    def current(self) -> TriagePolicy:
        """The policy in force now (reloading first when the file changed)."""
        with self._lock:
            if self._stat() != self._signature:
                old = self._policy
                self._policy = self._load_now(strict=False)
                if self._policy is not old:
                    logger.info(
                        "triage policy now version %s (sha256 %s, %d rules, mode %s)",
                        self._policy.version,
                        self._policy.sha256[:12],
                        len(self._policy.rules),
                        self._policy.mode.value,
                    )
            return self._policy
