"""The segmentation backbone: MONAI ``SwinUNETR`` with two input channels.

Channel 0 is the local window, channel 1 the whole scan resized to the window size (see
:mod:`neuroradix.models.transforms`).  :func:`forward_with_features` runs the network once and
returns both the segmentation logits and the pooled patch embedding: encoder1/2/3/4/10 outputs,
each mean-pooled over space and concatenated, ``(1 + 1 + 2 + 4 + 16) * feature_size`` values
(1152 for ``feature_size=48``).
"""

from __future__ import annotations

import logging
from typing import cast

import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from neuroradix.models.attention import set_fused_attention
from neuroradix.models.config import BackboneConfig

logger = logging.getLogger(__name__)

__all__ = ["build_backbone", "forward_with_features", "encode_patches", "SegmentationWithFeatures"]


def build_backbone(cfg: BackboneConfig, *, fused_attention: bool = True) -> nn.Module:
    """Build MONAI's ``SwinUNETR`` from ``cfg`` (random weights).

    Parameters
    ----------
    cfg:
        The backbone's hyper-parameters.
    fused_attention:
        Swap MONAI's window attention for :class:`~neuroradix.models.attention.FusedWindowAttention`
        (one ``scaled_dot_product_attention`` call; same parameters, same ``state_dict`` keys, so
        releases load either way).  ``False`` keeps MONAI's eager attention (the reference path).
    """

    if not isinstance(cfg, BackboneConfig):
        raise TypeError(f"cfg must be a BackboneConfig, got {type(cfg).__name__}")
    model = SwinUNETR(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        feature_size=cfg.feature_size,
        use_checkpoint=cfg.use_checkpoint,
        window_size=cfg.window_size,
        spatial_dims=3,
    )
    if fused_attention:
        set_fused_attention(model, True)
    return model


def _pool(t: torch.Tensor) -> torch.Tensor:
    return t.float().mean(dim=(2, 3, 4))


def _encoders(module: nn.Module, x: torch.Tensor):
    model = cast(SwinUNETR, module)  # a SwinUNETR from build_backbone (or unwrapped from DDP)
    hidden = model.swinViT(x, model.normalize)
    enc0 = model.encoder1(x)
    enc1 = model.encoder2(hidden[0])
    enc2 = model.encoder3(hidden[1])
    enc3 = model.encoder4(hidden[2])
    dec4 = model.encoder10(hidden[4])
    return hidden, enc0, enc1, enc2, enc3, dec4


def forward_with_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of ``SwinUNETR`` returning ``(logits [B, C, *roi], features [B, 24*feature_size])``.

    The same computation as ``SwinUNETR.forward`` (checked by the tests), with the encoder
    outputs pooled on the way; the features are float32 whatever the autocast dtype.
    """
    hidden, enc0, enc1, enc2, enc3, dec4 = _encoders(model, x)
    model = cast(SwinUNETR, model)
    feats = torch.cat([_pool(enc0), _pool(enc1), _pool(enc2), _pool(enc3), _pool(dec4)], dim=1)
    dec3 = model.decoder5(dec4, hidden[3])
    dec2 = model.decoder4(dec3, enc3)
    dec1 = model.decoder3(dec2, enc2)
    dec0 = model.decoder2(dec1, enc1)
    out = model.decoder1(dec0, enc0)
    return model.out(out), feats


def encode_patches(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled patch embeddings only (encoder path, no decoder): ``[B, 24*feature_size]``.

    For stage-2 exports when the segmentation is not wanted; identical to the features of
    :func:`forward_with_features`.
    """
    _, enc0, enc1, enc2, enc3, dec4 = _encoders(model, x)
    return torch.cat([_pool(enc0), _pool(enc1), _pool(enc2), _pool(enc3), _pool(dec4)], dim=1)


class SegmentationWithFeatures(nn.Module):
    """Wraps a ``SwinUNETR`` so that ``forward(x)`` returns ``(logits, features)`` (for compile/DDP)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_with_features(self.model, x)
