"""Talking to the PACS: the DICOMweb client (typed summaries), the choice of series (pure rules), and
what Orthanc says about itself (versions, the oldest Orthanc the node runs on)."""

from importlib import import_module
from typing import Any

_OFFERS = {
    "PacsClient": "dicomweb",
    "StudySummary": "summaries",
    "SeriesSummary": "summaries",
    "InstanceSummary": "summaries",
    "select_series": "series",
    "load_rules": "series",
    "source_fingerprint": "series",
    "OrthancInfo": "orthanc_info",
    "read_orthanc_info": "orthanc_info",
    "check_version": "orthanc_info",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
