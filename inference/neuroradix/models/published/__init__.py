"""Published chest-CT models served from the weights a site downloads.

:data:`REGISTRY` maps each model's name (``"colipri"``, ``"ct-clip"``, ``"merlin"``) to its
:class:`~neuroradix.models.published.base.PublishedSpec`; each model module adds itself with one
line below.  The modules import torch and their reference packages lazily, so importing the
registry is cheap.
"""

from __future__ import annotations

from neuroradix.models.published.base import PublishedSpec
from neuroradix.models.published.colipri import COLIPRI
from neuroradix.models.published.ctclip import CTCLIP
from neuroradix.models.published.merlin import MERLIN

__all__ = ["REGISTRY", "get_spec"]

REGISTRY: dict[str, PublishedSpec] = {
    COLIPRI.name: COLIPRI,
    CTCLIP.name: CTCLIP,
    MERLIN.name: MERLIN,
}


def get_spec(name: str) -> PublishedSpec:
    """The spec of published model ``name``; ``KeyError`` listing the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown published model {name!r}; known: {sorted(REGISTRY)}") from None
