"""Triage on arrival: the policy (data), and the pure decision that never lowers a level.

``policy`` loads and validates the site's YAML and keeps the live one (:class:`PolicyStore`);
``decide`` turns (policy, results, job outcome, previous decision) into a :class:`Decision`;
``cli`` is ``neuroradix triage check|set``. Labels, notifications and the API build on these.
"""

from neuroradix.triage.decide import Decision, Evidence, Outcome, acknowledge, decide
from neuroradix.triage.policy import (
    Level,
    Mode,
    PolicyError,
    PolicyStore,
    Rule,
    TriagePolicy,
    default_policy_path,
    load_default_policy,
    load_policy,
    parse_policy,
)

__all__ = [
    "Decision",
    "Evidence",
    "Level",
    "Mode",
    "Outcome",
    "PolicyError",
    "PolicyStore",
    "Rule",
    "TriagePolicy",
    "acknowledge",
    "decide",
    "default_policy_path",
    "load_default_policy",
    "load_policy",
    "parse_policy",
]
