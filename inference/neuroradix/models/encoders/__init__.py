"""Image encoders behind one interface (:mod:`neuroradix.models.encoders.base`), and their registry.

``build_encoder(name, **kwargs)`` builds one by its registry key: ``"swinunetr"`` (the node's
SwinUNETR patch embeddings), ``"merlin"`` / ``"astra"`` (pretrained I3ResNet-152s, weights from the
``encoders`` extra), ``"vit"`` (the contrastive 3D ViT).
"""

from __future__ import annotations

from typing import Callable

from neuroradix.models.encoders.base import Encoder, EncoderOutput, grid_positions
from neuroradix.models.encoders.i3resnet import build_astra, build_merlin
from neuroradix.models.encoders.swin import build_swinunetr
from neuroradix.models.encoders.vit import build_vit

__all__ = ["Encoder", "EncoderOutput", "grid_positions", "ENCODERS", "build_encoder"]

ENCODERS: dict[str, Callable[..., Encoder]] = {}

# --- registrations (one line each) ---------------------------------------------------------
ENCODERS["swinunetr"] = build_swinunetr
ENCODERS["merlin"] = build_merlin
ENCODERS["astra"] = build_astra
ENCODERS["vit"] = build_vit  # the contrastive 3D ViT (vit.py)
# ---------------------------------------------------------------------------------------------


def build_encoder(name: str, **kwargs) -> Encoder:
    """Build the encoder registered as ``name`` (``KeyError`` listing the known names otherwise)."""
    try:
        factory = ENCODERS[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}") from None
    return factory(**kwargs)
