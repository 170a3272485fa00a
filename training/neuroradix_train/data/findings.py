"""The 18 CT-RATE findings, in the order of CT-RATE's ``multi_abnormality_labels`` CSVs.

The order is the column order of ``dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv``
(checked against the published header, see ``docs/training.md``); the head's classifier outputs
these 18 logits followed by normal/abnormal.
"""

from __future__ import annotations

from neuroradix.models.findings import CTRATE_FINDINGS

FINDINGS: tuple[str, ...] = CTRATE_FINDINGS  # one source: the node's finding catalogue

ABNORMAL = "Abnormal"
"""Name of the extra normal/abnormal output (1 when any finding is present)."""


def finding_index(name: str) -> int:
    """Index of a finding by its CT-RATE name.

    Raises
    ------
    KeyError
        When ``name`` is not one of :data:`FINDINGS`.
    """
    try:
        return FINDINGS.index(name)
    except ValueError:
        raise KeyError(f"{name!r} is not a CT-RATE finding; expected one of {', '.join(FINDINGS)}") from None
