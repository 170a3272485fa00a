"""Label-remap tables: any N-class source segmentation scheme -> the 43-class chest-CT scheme.

A table (``data/remap/<name>.json``) lists the source scheme's labels and, for every source
class name, the target class name (or ``null`` for background)::

    {"name": "totalseg117-to-chest-ct-43", "version": "1",
     "source": {"name": "totalseg117", "labels": {"1": "spleen", ...}},
     "target": {"scheme": "chest-ct-43", "version": "1"},
     "map": {"spleen": "Spleen", "small_bowel": null, ...}}

Loading checks that every source class is mapped exactly once, that no unknown source class is
named, and that every target is a class of the target scheme (a name, or a label 0..N).
Applying a table to a label array refuses values that are not source labels.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Union

import numpy as np

from neuroradix.errors import ConfigError
from neuroradix.schemes import ClassScheme, load_scheme

__all__ = ["LabelRemap", "parse_remap", "load_remap"]


@dataclass(frozen=True)
class LabelRemap:
    """A validated lookup table from source labels to target labels (0 = background)."""

    name: str
    source_name: str
    target_scheme: str
    source_labels: dict  # int -> source class name
    lut: np.ndarray  # int16, length max(source)+1, -1 where no source label exists

    @property
    def num_target_classes(self) -> int:
        return int(self.lut.max())

    def apply(self, labels):
        """Map a label array (numpy or torch, any shape) to target labels (``uint8``; same type).

        Raises
        ------
        ValueError
            If ``labels`` holds a value that is not a source label (nor 0).
        """
        torch = sys.modules.get("torch")  # a torch tensor means torch is imported already
        is_torch = torch is not None and isinstance(labels, torch.Tensor)
        arr = labels.detach().cpu().numpy() if is_torch else np.asarray(labels)
        if arr.size and (not np.issubdtype(arr.dtype, np.integer)):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError(f"{self.name}: labels must be integers")
            arr = arr.astype(np.int64)
        values = np.unique(arr)
        bad = [int(v) for v in values if v < 0 or v >= len(self.lut) or self.lut[int(v)] < 0]
        if bad:
            raise ValueError(
                f"{self.name}: label value(s) {bad[:10]} are not labels of source scheme {self.source_name!r}"
            )
        out = self.lut[arr.astype(np.int64)].astype(np.uint8)
        if is_torch and torch is not None:
            return torch.from_numpy(out).to(labels.device)
        return out


def parse_remap(data: dict, source: str = "<dict>", target: ClassScheme | None = None) -> LabelRemap:
    """Validate a remap dictionary and build its lookup table."""
    for key in ("name", "source", "target", "map"):
        if key not in data:
            raise ConfigError(f"{source}: '{key}' is missing")
    src = data["source"]
    if not isinstance(src, dict) or not isinstance(src.get("labels"), dict) or not src["labels"]:
        raise ConfigError(f"{source}: source.labels must be a non-empty mapping label -> name")
    try:
        labels = {int(k): str(v) for k, v in src["labels"].items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: source labels must be integers: {exc}") from exc
    if min(labels) < 1:
        raise ConfigError(f"{source}: source labels start at 1 (0 is background)")
    if len(set(labels.values())) != len(labels):
        raise ConfigError(f"{source}: source class names are not unique")
    scheme = target or load_scheme(data["target"].get("scheme", ""))
    want_version = data["target"].get("version")
    if want_version is not None and str(want_version) != scheme.version:
        raise ConfigError(f"{source}: made for {scheme.name} version {want_version}, found version {scheme.version}")
    mapping = data["map"]
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: map must be a mapping source name -> target")
    names = set(labels.values())
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"{source}: map names unknown source class(es) {unknown[:10]}")
    missing = sorted(names - set(mapping))
    if missing:
        raise ConfigError(f"{source}: source class(es) {missing[:10]} are not mapped (use null for background)")
    lut = np.full(max(labels) + 1, -1, dtype=np.int16)
    lut[0] = 0
    for label, name in labels.items():
        tgt = mapping[name]
        if tgt is None:
            value = 0
        elif isinstance(tgt, bool):
            raise ConfigError(f"{source}: target of {name!r} must be a class name, a label or null")
        elif isinstance(tgt, int):
            if not 0 <= tgt <= len(scheme):
                raise ConfigError(f"{source}: target {tgt} of {name!r} is outside 0..{len(scheme)}")
            value = tgt
        elif isinstance(tgt, str):
            try:
                value = scheme.by_name(tgt).label
            except KeyError as exc:
                raise ConfigError(f"{source}: target {tgt!r} of {name!r} is not a class of {scheme.name}") from exc
        else:
            raise ConfigError(f"{source}: target of {name!r} must be a class name, a label or null")
        lut[label] = value
    return LabelRemap(str(data["name"]), str(src.get("name", "")), scheme.name, labels, lut)


def load_remap(name_or_path: Union[str, Path]) -> LabelRemap:
    """Load a remap table by file path or by name from the package's ``data/remap``."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        ref = resources.files("neuroradix") / "data" / "remap" / f"{name_or_path}.json"
        if not ref.is_file():
            raise ConfigError(f"remap table {name_or_path!r} not found")
        text, source = ref.read_text(encoding="utf-8"), f"data/remap/{name_or_path}.json"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
    return parse_remap(data, source)
