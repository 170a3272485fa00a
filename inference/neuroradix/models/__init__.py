"""Deep-learning models of the node: SwinUNETR backbone, patch embeddings, multitask head with BART.

Modules: ``config`` (typed configuration), ``transforms`` (preprocessing and MONAI-style
transforms shared with training), ``backbone``, ``attention`` (fused window attention),
``speed`` (``sw_batch`` choice, compiled backbone), ``sliding`` (sliding-window segmentation +
embeddings), ``embeddings`` (stage-2 files), ``bridge`` / ``moe`` / ``head`` (multitask head),
``decode`` (static-cache greedy decoding), ``tokenizer``, ``findings`` and ``remap`` (data
files), ``release`` (weights releases: manifest, hashes, loading), ``cli``
(``neuroradix weights ...``).
"""

from importlib import import_module
from typing import Any

_OFFERS = {
    "ModelConfig": "config",
    "build_backbone": "backbone",
    "MultitaskHead": "head",
    "sliding_segment": "sliding",
    "Release": "release",
    "load_release": "release",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
