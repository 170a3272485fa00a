"""One module per DICOM object (``seg``, ``sr``, ``pmap``, ``pdf``): ``build_*()`` returns datasets; storing is separate.

``encode`` turns a result into all of them, ``summary`` writes ``results.json``, ``common`` holds
what the objects share (:class:`OutputContext`, UIDs, equipment).
"""

from importlib import import_module
from typing import Any

_OFFERS = {
    "encode_result": "encode",
    "OutputContext": "common",
    "build_seg": "seg",
    "build_sr": "sr",
    "build_pmap": "pmap",
    "build_pdf": "pdf",
    "results_document": "summary",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
