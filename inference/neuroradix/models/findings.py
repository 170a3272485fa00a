"""The finding catalogue (``data/findings/ct-rate-18.json``): names, order and codes of the outputs.

The classifier's 19 outputs are the 18 CT-RATE findings in CT-RATE's order followed by
"Abnormal".  The catalogue is data, validated on load: the order must be CT-RATE's, every code
a ``{value, scheme, meaning}`` triple, and every related segment a class of ``chest-ct-43``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional

from neuroradix.errors import ConfigError
from neuroradix.schemes import load_scheme
from neuroradix.types import Code

__all__ = ["CTRATE_FINDINGS", "FindingSpec", "FindingCatalogue", "load_findings"]

#: CT-RATE's 18 findings in its label order (the classifier's first 18 outputs).
CTRATE_FINDINGS: tuple[str, ...] = (
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


@dataclass(frozen=True)
class FindingSpec:
    """One classifier output: its name, what it is, where, and the segments it relates to."""

    index: int
    name: str
    code: Code
    site: Optional[Code]
    segment_labels: tuple[int, ...]


@dataclass(frozen=True)
class FindingCatalogue:
    name: str
    version: str
    findings: tuple[FindingSpec, ...]  # 18 CT-RATE findings then "Abnormal"

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.findings]

    def __len__(self) -> int:
        return len(self.findings)


def _entry(entry: dict, index: int, scheme, where: str) -> FindingSpec:
    try:
        code = Code.from_dict(entry["code"])
        site = Code.from_dict(entry["site"]) if entry.get("site") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad code or site: {exc}") from exc
    if entry.get("index") != index:
        raise ConfigError(f"{where}: index must be {index}, got {entry.get('index')!r}")
    labels = []
    for seg in entry.get("segments", []):
        try:
            labels.append(scheme.by_name(seg).label)
        except KeyError as exc:
            raise ConfigError(f"{where}: segment {seg!r} is not a class of {scheme.name}") from exc
    return FindingSpec(index, str(entry.get("name")), code, site, tuple(labels))


@lru_cache(maxsize=4)
def load_findings(name: str = "ct-rate-18", scheme: str = "chest-ct-43") -> FindingCatalogue:
    """Load and validate the packaged finding catalogue ``data/findings/<name>.json``."""
    ref = resources.files("neuroradix") / "data" / "findings" / f"{name}.json"
    source = f"data/findings/{name}.json"
    if not ref.is_file():
        raise ConfigError(f"finding catalogue {name!r} not found")
    try:
        data = json.loads(ref.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
    seg_scheme = load_scheme(scheme)
    entries = data.get("findings")
    if not isinstance(entries, list) or "abnormal" not in data:
        raise ConfigError(f"{source}: needs 'findings' (a list) and 'abnormal'")
    names = [e.get("name") for e in entries]
    if tuple(names) != CTRATE_FINDINGS:
        raise ConfigError(f"{source}: findings must be CT-RATE's 18 in order {list(CTRATE_FINDINGS)}, got {names}")
    specs = [_entry(e, i, seg_scheme, f"{source}: findings[{i}]") for i, e in enumerate(entries)]
    specs.append(_entry(data["abnormal"], len(entries), seg_scheme, f"{source}: abnormal"))
    return FindingCatalogue(str(data.get("name")), str(data.get("version")), tuple(specs))
