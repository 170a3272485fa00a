"""Tools for people trying the node: ``demo`` (``make demo``) and ``viewer`` (OHIF behind a DICOMweb proxy)."""

from importlib import import_module
from typing import Any

_OFFERS = {
    "run_demo": "demo",
    "create_app": "viewer",
    "ViewerSettings": "viewer",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
