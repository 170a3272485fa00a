"""Segmentation class schemes, kept as data (``data/schemes/*.json``) and validated on load.

A scheme file looks like::

    {"name": "lung-hu-4", "version": "1",
     "classes": [{"label": 1, "name": "Body",
                  "category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
                  "type": {"value": "38266002", "scheme": "SCT", "meaning": "Entire body as a whole"},
                  "laterality": null, "color": [177, 122, 101]}, ...]}

Labels run from 1 without gaps; 0 is background.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Union

from neuroradix.errors import ConfigError
from neuroradix.types import Code, SegmentDescription


@dataclass(frozen=True)
class ClassScheme:
    name: str
    version: str
    segments: tuple[SegmentDescription, ...]

    def by_name(self, name: str) -> SegmentDescription:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(f"class {name!r} is not in scheme {self.name!r}")

    def by_label(self, label: int) -> SegmentDescription:
        for s in self.segments:
            if s.label == label:
                return s
        raise KeyError(f"label {label} is not in scheme {self.name!r}")

    def __len__(self) -> int:
        return len(self.segments)


def _code(entry: dict, key: str, where: str) -> Code:
    """The required code ``entry[key]``; :class:`ConfigError` naming ``where`` when missing or bad."""
    code = _optional_code(entry, key, where)
    if code is None:
        raise ConfigError(f"{where}: '{key}' is missing")
    return code


def _optional_code(entry: dict, key: str, where: str) -> Code | None:
    """The code ``entry[key]``, or None when the key is absent or null."""
    value = entry.get(key)
    if value is None:
        return None
    try:
        return Code.from_dict(value)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: '{key}' is not a code {{value, scheme, meaning}}: {exc}") from exc


def parse_scheme(data: dict, source: str = "<dict>") -> ClassScheme:
    """Validate a scheme dictionary and build a :class:`ClassScheme`."""
    for key in ("name", "version", "classes"):
        if key not in data:
            raise ConfigError(f"{source}: '{key}' is missing")
    segments = []
    for i, entry in enumerate(data["classes"]):
        where = f"{source}: classes[{i}]"
        label = entry.get("label")
        if not isinstance(label, int) or label != i + 1:
            raise ConfigError(f"{where}: label must be {i + 1} (labels run from 1 without gaps), got {label!r}")
        color = entry.get("color")
        if color is not None and (len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
            raise ConfigError(f"{where}: color must be three ints 0-255")
        segments.append(
            SegmentDescription(
                label=label,
                name=str(entry.get("name") or ""),
                category=_code(entry, "category", where),
                type=_code(entry, "type", where),
                laterality=_optional_code(entry, "laterality", where),
                color=tuple(color) if color is not None else None,
            )
        )
    names = [s.name for s in segments]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: class names are not unique")
    return ClassScheme(str(data["name"]), str(data["version"]), tuple(segments))


def load_scheme(name_or_path: Union[str, Path]) -> ClassScheme:
    """Load a scheme by file path, or by name from the package's ``data/schemes``."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        text = path.read_text(encoding="utf-8")
        source = str(path)
    else:
        ref = resources.files("neuroradix") / "data" / "schemes" / f"{name_or_path}.json"
        if not ref.is_file():
            raise ConfigError(f"class scheme {name_or_path!r} not found")
        text = ref.read_text(encoding="utf-8")
        source = f"data/schemes/{name_or_path}.json"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
    return parse_scheme(data, source)
