"""Geometry and HU: a DICOM series into a :class:`~neuroradix.types.Volume`, NIfTI <-> volume, a volume as a CT series.

``volume`` (assembly, orientation, limits), ``nifti`` (the one RAS<->LPS conversion), ``ctseries``
(writing a volume as a CT series), ``frames`` and ``enhanced`` (multi-frame CT).
"""

from importlib import import_module
from typing import Any

_OFFERS = {
    "assemble": "volume",
    "nifti_to_volume": "nifti",
    "volume_to_nifti": "nifti",
    "volume_to_ct_series": "ctseries",
    "write_series": "ctseries",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
