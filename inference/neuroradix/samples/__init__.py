"""Demo and test inputs: the real chest CT (shared folder or the PyPI sdist) and synthetic phantoms."""

from importlib import import_module
from typing import Any

_OFFERS = {
    "sample_ct_volume": "real_ct",
    "real_ct_path": "real_ct",
    "thorax_phantom": "phantom",
    "findings_phantom": "phantom",
    "airway_phantom": "airway_phantom",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
