"""Report labelers: which of the 18 CT-RATE findings a report states as present.

A labeler is anything with a ``name`` and ``label_many(texts) -> (n, 18)`` (:class:`Labeler`).
Two exist: the rule labeler below (``"rule"``, the default, offline) and CT-RATE's RadBERT
classifier (``"radbert"``, :mod:`neuroradix_train.evaluation.radbert`, from files the user
supplies); :func:`build_labeler` makes either from settings.

The rule labeler is used for the clinical-efficacy (CE) metrics of report generation: the same labeler is
applied to the generated and to the reference report, and the two label vectors are compared.

How it works (NegEx-style, Chapman et al. 2001, reduced to what chest-CT reports need):

1. The text is lower-cased and split into clauses at sentence ends, semicolons and
   contrastive conjunctions ("but", "however", "whereas").
2. Each finding has a list of regular expressions (synonyms and common phrasings of CT-RATE's
   reports, e.g. "emphysematous changes", "pleural or pericardial effusion").
3. A match counts as *negated* when a negation cue ("no", "not", "without", "absence of",
   "negative for", "free of", "rule out") precedes it in the same clause, or a post-negation
   ("was not detected", "were not observed", "is not seen", "absent", "not present") follows
   it in the same clause.
4. A finding is positive when at least one match in the report is not negated.

The agreement of this labeler with CT-RATE's own label CSV is reported by ``evaluate``
(``labeler_agreement``) and in the smoke run on the fixture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from neuroradix.errors import ConfigError
from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.evaluation.radbert import RadBERTLabeler
from neuroradix_train.evaluation.scores import binary_scores

LABELERS = ("rule", "radbert")
"""The labeler names :func:`build_labeler` knows."""


@runtime_checkable
class Labeler(Protocol):
    """What clinical efficacy needs of a report labeler."""

    name: str

    def label_many(self, texts: Iterable[str]) -> np.ndarray:
        """A ``(n, 18)`` 0/1 array in :data:`FINDINGS` order."""
        ...


_PATTERNS: dict[str, tuple[str, ...]] = {
    "Medical material": (
        r"medical (?:material|device)",
        r"catheter",
        r"\bstents?\b",
        r"pacemaker",
        r"prosthe(?:sis|tic)",
        r"surgical clips?",
        r"sternotomy (?:wires?|sutures?)",
        r"\bport\b",
        r"(?:chest|drainage|endotracheal|nasogastric) tube",
        r"cardiac valve replacement",
        r"metallic (?:clips?|material|wires?)",
    ),
    "Arterial wall calcification": (
        r"arterial wall calcification",
        r"atherosclero(?:sis|tic)",
        r"atheroma",
        r"aortic (?:wall )?calcification",
        r"calcifi\w* (?:plaques? )?(?:in|of) the (?:aort\w*|arterial|thoracic aorta)",
        r"vascular calcification",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"enlarged heart",
        r"heart (?:size|contour)s? (?:is |are |was )?(?:increased|enlarged)",
        r"increased cardiothoracic ratio",
    ),
    "Pericardial effusion": (
        r"pericardial effusion",
        r"pericardial fluid",
        r"pleural (?:or|and|and/or) pericardial effusion",
        r"pericardial (?:or|and|and/or) pleural effusion",
    ),
    "Coronary artery wall calcification": (
        r"coronary (?:artery |arteries |arterial )?(?:wall )?calcifi\w*",
        r"calcifi\w* (?:plaques? )?(?:in|of) (?:the )?coronary",
        r"coronary (?:artery |arteries )?(?:atherosclero\w*|atheroma)",
    ),
    "Hiatal hernia": (r"hiat(?:al|us) hernia",),
    "Lymphadenopathy": (
        r"lymphadenopathy",
        r"enlarged (?:mediastinal |hilar |axillary )?lymph nodes?",
        r"lymph nodes? (?:of|in|with) (?:a )?pathologic(?:al)? (?:size|dimensions?)",
        r"pathologic(?:al)?(?:ly)? (?:sized|enlarged|increased) (?:mediastinal |hilar )?lymph",
    ),
    "Emphysema": (r"emphysema\w*",),
    "Atelectasis": (r"atelecta\w*",),
    "Lung nodule": (r"nodules?\b", r"nodular (?:lesion|density|densities)"),
    "Lung opacity": (r"opacit(?:y|ies)", r"ground[- ]glass", r"infiltrat\w*"),
    "Pulmonary fibrotic sequela": (r"fibrotic", r"fibrosis", r"sequela\w*", r"fibroatelecta\w*"),
    "Pleural effusion": (
        r"pleural effusion",
        r"pleural fluid",
        r"pleural (?:or|and|and/or) pericardial effusion",
        r"effusion in the (?:right|left|bilateral) pleural",
    ),
    "Mosaic attenuation pattern": (r"mosaic (?:attenuation|perfusion|pattern)",),
    "Peribronchial thickening": (
        r"peribronchial (?:wall )?thickening",
        r"bronchial wall thickening",
        r"peribronchial cuffing",
    ),
    "Consolidation": (r"consolidat\w*",),
    "Bronchiectasis": (r"bronchiecta\w*",),
    "Interlobular septal thickening": (
        r"(?:interlobular )?septal thickening",
        r"thickening of (?:the )?interlobular sept\w*",
    ),
}

_PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|absence of|absent|negative for|free of|rule out|ruled out|nor|neither)\b"
)
_POST_NEGATION = re.compile(
    r"\b(?:(?:was|were|is|are) not (?:detected|observed|seen|found|present|identified|noted|evident)|"
    r"not (?:detected|observed|seen|found|present|identified)|(?:is|are|was|were) absent|absent)\b"
)
_CLAUSE_SPLIT = re.compile(r"(?<=[.;:!?])\s+|\n+|\bbut\b|\bhowever\b|\bwhereas\b|\balthough\b")


@dataclass(frozen=True)
class Mention:
    """One match of a finding's pattern in a report."""

    finding: str
    text: str
    negated: bool
    clause: str


class ReportLabeler:
    """The rule labeler (``name == "rule"``): the 18 CT-RATE findings (1 present, 0 absent or negated).

    Parameters
    ----------
    patterns:
        Optional replacement for the built-in pattern table (finding name -> regexes).
    """

    name = "rule"

    def __init__(self, patterns: dict[str, Sequence[str]] | None = None) -> None:
        table = patterns if patterns is not None else _PATTERNS
        unknown = set(table) - set(FINDINGS)
        if unknown:
            raise ValueError(f"patterns: unknown finding names {sorted(unknown)}")
        self._compiled = {name: [re.compile(p) for p in table.get(name, ())] for name in FINDINGS}

    def mentions(self, text: str) -> list[Mention]:
        """All matches in ``text``, each with its negation status."""
        out: list[Mention] = []
        for clause in _CLAUSE_SPLIT.split((text or "").lower()):
            if not clause or not clause.strip():
                continue
            for name, regexes in self._compiled.items():
                for rx in regexes:
                    for m in rx.finditer(clause):
                        before, after = clause[: m.start()], clause[m.end() :]
                        negated = bool(_PRE_NEGATION.search(before)) or bool(_POST_NEGATION.search(after))
                        out.append(Mention(name, m.group(0), negated, clause.strip()))
        return out

    def label(self, text: str) -> np.ndarray:
        """A ``(18,)`` int array in :data:`FINDINGS` order."""
        positive = {m.finding for m in self.mentions(text) if not m.negated}
        return np.array([1 if name in positive else 0 for name in FINDINGS], dtype=np.int64)

    def label_many(self, texts: Iterable[str]) -> np.ndarray:
        """A ``(n, 18)`` int array."""
        rows = [self.label(t) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, len(FINDINGS)), dtype=np.int64)


def agreement(predicted: np.ndarray, reference: np.ndarray) -> dict:
    """Per-finding and overall agreement of two binary label matrices ``(n, 18)``.

    Returns accuracy, precision, recall and F1 per finding (``per_finding``), micro-averaged
    (``micro``) and macro-averaged over the findings positive in the reference (``macro``), where
    ``predicted`` plays the labeler and ``reference`` the label CSV.
    """
    predicted = np.asarray(predicted).astype(int)
    reference = np.asarray(reference).astype(int)
    if predicted.shape != reference.shape:
        raise ValueError(f"label matrices differ in shape: {predicted.shape} vs {reference.shape}")
    per = {}
    for j, name in enumerate(FINDINGS[: predicted.shape[1]]):
        s = binary_scores(reference[:, j], predicted[:, j])
        s["accuracy"] = float((reference[:, j] == predicted[:, j]).mean()) if len(reference) else float("nan")
        per[name] = s
    micro = binary_scores(reference.ravel(), predicted.ravel())
    micro["accuracy"] = float((reference == predicted).mean()) if reference.size else float("nan")
    present = [n for n, v in per.items() if v["support"] > 0]
    macro = {
        k: float(np.mean([per[n][k] for n in present])) if present else float("nan")
        for k in ("precision", "recall", "f1")
    }
    macro["n_findings"] = len(present)
    return {"per_finding": per, "micro": micro, "macro": macro}


def build_labeler(
    kind: str = "rule", checkpoint: Optional[Path] = None, tokenizer: Optional[Path] = None, device: str = "cpu"
) -> Labeler:
    """A report labeler by name.

    Parameters
    ----------
    kind:
        ``"rule"`` (offline, default) or ``"radbert"`` (CT-RATE's classifier).
    checkpoint, tokenizer:
        For ``"radbert"``: the classifier's weights and the folder with its tokenizer files and
        ``config.json`` (see :class:`~neuroradix_train.evaluation.radbert.RadBERTLabeler`).
    device:
        Torch device of the RadBERT classifier.

    Raises
    ------
    ConfigError
        An unknown ``kind``, or ``"radbert"`` without both paths.
    """
    if kind == "rule":
        return ReportLabeler()
    if kind == "radbert":
        if not checkpoint or not tokenizer:
            missing = [n for n, v in (("checkpoint", checkpoint), ("tokenizer", tokenizer)) if not v]
            raise ConfigError(
                f"the radbert labeler needs {' and '.join(missing)}: CT-RATE's classifier weights "
                "(checkpoint) and a folder with its tokenizer files and config.json (tokenizer)"
            )
        return RadBERTLabeler(Path(checkpoint), Path(tokenizer), device=device)
    raise ConfigError(f"labeler must be one of {LABELERS}, got {kind!r}")
