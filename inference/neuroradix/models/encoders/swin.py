"""The node's SwinUNETR patch embeddings behind the :class:`~neuroradix.models.encoders.base.Encoder` interface.

Nothing changes for existing releases: the backbone is :func:`neuroradix.models.backbone.build_backbone`
(same ``state_dict`` keys), a token is one sliding window's pooled embedding
(:func:`neuroradix.models.backbone.encode_patches`, ``24 * feature_size`` values, 1152 for
``feature_size=48``), the windows are laid out as in :func:`neuroradix.models.sliding.sliding_segment`
and each window gets the whole scan resized to the window as its second channel.  ``forward`` takes
the preprocessed network-grid image ``(1, 1, D, H, W)`` (:func:`neuroradix.models.transforms.preprocess_volume`)
and runs the encoder path only; the deep analyzer keeps using ``sliding_segment``, which gives the
labels and the same embeddings in one pass.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuroradix.models.backbone import build_backbone, encode_patches
from neuroradix.models.config import BackboneConfig, PreprocessConfig
from neuroradix.models.encoders.base import Encoder, EncoderOutput, standard_affine
from neuroradix.models.sliding import PatchGrid, window_starts
from neuroradix.models.transforms import preprocess_volume
from neuroradix.types import Volume

__all__ = ["SwinEncoder", "build_swinunetr"]


class SwinEncoder(Encoder):
    """SwinUNETR window embeddings as tokens; ``width = 24 * feature_size``.

    Parameters
    ----------
    backbone:
        The backbone's configuration (default: the node's, ``feature_size=48``).
    preprocess_cfg:
        Preprocessing and window layout (default: the node's).
    model:
        An existing ``SwinUNETR`` (e.g. a release's); built with random weights when ``None``.
    sw_batch_size:
        Windows per backbone call.
    """

    name = "swinunetr"

    def __init__(
        self,
        backbone: Optional[BackboneConfig] = None,
        preprocess_cfg: Optional[PreprocessConfig] = None,
        model: Optional[nn.Module] = None,
        sw_batch_size: int = 4,
    ) -> None:
        super().__init__()
        self.backbone_cfg = backbone or BackboneConfig()
        self.preprocess_cfg = preprocess_cfg or PreprocessConfig()
        self.model = model if model is not None else build_backbone(self.backbone_cfg)
        self.width = self.backbone_cfg.embed_dim
        self.sw_batch_size = int(sw_batch_size)

    def windows(self, shape: Sequence[int]) -> PatchGrid:
        """The window layout on a network grid of ``shape`` (identity affine)."""
        roi, ov = self.preprocess_cfg.patch_size, self.preprocess_cfg.overlap
        padded = [max(int(s), roi) for s in shape]
        starts = tuple(tuple(int(v) for v in window_starts(n, roi, ov)) for n in padded)
        return PatchGrid(starts, roi, (int(shape[0]), int(shape[1]), int(shape[2])), np.eye(4))  # type: ignore[arg-type]

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        """``image (B, 1, D, H, W)`` normalised network grid -> one token per window."""
        if image.ndim != 5 or image.shape[1] != 1:
            raise ValueError(f"image must be (B, 1, D, H, W), got {tuple(image.shape)}")
        roi = self.preprocess_cfg.patch_size
        shape = tuple(int(s) for s in image.shape[2:])
        grid = self.windows(shape)
        pads = [max(0, roi - s) for s in shape]
        out = []
        for b in range(image.shape[0]):
            img = image[b, 0].float()
            glob = F.interpolate(img[None, None], size=(roi,) * 3, mode="trilinear", align_corners=False)[0]
            if any(pads):
                img = F.pad(img, (0, pads[2], 0, pads[1], 0, pads[0]), value=0.0)
            starts = grid.patch_starts()
            feats = []
            for lo in range(0, len(starts), self.sw_batch_size):
                chunk = starts[lo : lo + self.sw_batch_size]
                x = torch.stack([img[z : z + roi, y : y + roi, w : w + roi] for z, y, w in chunk])[:, None]
                x = torch.cat([x, glob.expand(len(chunk), -1, -1, -1, -1)], dim=1)
                feats.append(encode_patches(self.model, x).float())
            out.append(torch.cat(feats, dim=0))
        tokens = torch.stack(out)
        positions = torch.from_numpy(grid.centres()).float().to(tokens.device)
        return EncoderOutput(tokens, grid.counts, positions, tokens.mean(dim=1))

    def preprocess(self, volume_hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
        """An axial HU stack (see :func:`~neuroradix.models.encoders.base.standard_affine`) -> network grid."""
        return self.preprocess_volume(volume_hu, standard_affine(spacing_zyx))[0]

    def preprocess_volume(self, volume_hu: np.ndarray, affine: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        g = preprocess_volume(Volume(np.asarray(volume_hu), affine), self.preprocess_cfg)
        return torch.from_numpy(g.array)[None, None], g.affine

    def patch_grid(self, out: EncoderOutput, input_shape: Sequence[int], input_affine: np.ndarray) -> PatchGrid:
        g = self.windows(input_shape)
        return PatchGrid(g.starts, g.roi, g.shape, np.asarray(input_affine, dtype=np.float64))


def build_swinunetr(**kwargs) -> SwinEncoder:
    """Registry factory: :class:`SwinEncoder` (random weights unless ``model=`` is given)."""
    return SwinEncoder(**kwargs)
