"""The 18 CT-RATE findings, in the order of CT-RATE's ``multi_abnormality_labels`` CSVs.

The order is the column order of ``dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv``
(checked against the published header, see ``docs/training.md``); the head's classifier outputs
these 18 logits followed by normal/abnormal.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

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
