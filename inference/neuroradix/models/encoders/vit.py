"""A plain 3D Vision Transformer: the image encoder of the contrastive stage (``name = "vit"``).

One channel, the whole scan at a fixed grid: ``preprocess`` resamples the HU volume to
``target_spacing`` (trilinear), clips it to ``hu_window`` and maps it linearly to
``output_range``, then centre-crops or pads (with the value of air) to ``input_shape``, as
CT-CLIP does with its 480x480x240 crops at 0.75x0.75x1.5 mm and HU [-1000, 1000] -> [-1, 1]
(``ibrahimethemhamamci/CT-CLIP``, ``data_preprocess/preprocess_ctrate_*.py`` and ``scripts/data.py``).

The network: a 3D patch embedding (a ``Conv3d`` with kernel = stride = ``patch_size``), learned
position embeddings (trilinearly resized when an input grid differs from the configured one), a
[CLS] token, ``depth`` pre-norm transformer blocks and a final ``LayerNorm``. The patch tokens are
the :class:`~neuroradix.models.encoders.base.EncoderOutput` tokens, [CLS] is its global vector.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuroradix.models.encoders.base import Encoder, EncoderOutput, grid_positions

__all__ = ["ENCODER_CONFIG", "ENCODER_WEIGHTS", "ViTConfig", "ViTEncoder", "build_vit", "load_vit", "save_vit"]

ENCODER_CONFIG = "encoder.json"
"""File of a saved ViT's ``{"name": "vit", "config": ViTConfig.to_dict()}``."""
ENCODER_WEIGHTS = "encoder.pt"
"""File of a saved ViT's state dict (``torch.save``, read with ``weights_only=True``)."""


def _triple(value: Any, name: str, kind: type) -> tuple:
    values = (value,) * 3 if isinstance(value, int | float) else tuple(value)
    if len(values) != 3:
        raise ValueError(f"{name} must be one number or three, got {value!r}")
    return tuple(kind(v) for v in values)


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters and preprocessing of :class:`ViTEncoder` (recorded with its weights).

    Parameters
    ----------
    input_shape:
        Network grid ``(z, y, x)`` in voxels; the preprocessed scan is cropped or padded to it.
    target_spacing:
        Voxel size of the network grid in mm, ``(z, y, x)``.
    patch_size:
        Patch edge per axis; ``input_shape`` must be a multiple of it.
    width, depth, heads, mlp_ratio, dropout:
        Token width ``D``, transformer blocks, attention heads, MLP width as a multiple of
        ``D``, dropout of the blocks.
    hu_window, output_range:
        HU clip window and the range it is mapped to.
    """

    input_shape: tuple[int, int, int] = (192, 224, 224)
    target_spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    patch_size: tuple[int, int, int] = (16, 16, 16)
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    output_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        shape = _triple(self.input_shape, "input_shape", int)
        patch = _triple(self.patch_size, "patch_size", int)
        spacing = _triple(self.target_spacing, "target_spacing", float)
        if min(shape) < 1 or min(patch) < 1 or min(spacing) <= 0:
            raise ValueError("input_shape, patch_size and target_spacing must be positive")
        if any(s % p for s, p in zip(shape, patch)):
            raise ValueError(f"input_shape {shape} must be a multiple of patch_size {patch} on every axis")
        for name in ("width", "depth", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if not float(self.mlp_ratio) > 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        lo, hi = (float(v) for v in self.hu_window)
        a, b = (float(v) for v in self.output_range)
        if not (lo < hi and a < b):
            raise ValueError("hu_window and output_range must be increasing pairs")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "patch_size", patch)
        object.__setattr__(self, "target_spacing", spacing)
        object.__setattr__(self, "hu_window", (lo, hi))
        object.__setattr__(self, "output_range", (a, b))

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid of a configured input."""
        return tuple(s // p for s, p in zip(self.input_shape, self.patch_size))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ViTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"vit: unknown key(s) {unknown}; allowed: {sorted(names)}")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


class _Block(nn.Module):
    """Pre-norm transformer block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(round(width * mlp_ratio))
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViTEncoder(Encoder):
    """The 3D ViT (see the module docstring); ``width`` is the token width ``D``."""

    name = "vit"

    def __init__(self, config: Optional[ViTConfig] = None) -> None:
        super().__init__()
        self.config = cfg = config or ViTConfig()
        self.width = cfg.width
        self.patch_embed = nn.Conv3d(1, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, int(np.prod(cfg.grid)), cfg.width))
        self.blocks = nn.ModuleList(_Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _positions(self, grid: tuple[int, int, int]) -> torch.Tensor:
        if grid == self.config.grid:
            return self.pos_embed
        pe = self.pos_embed.reshape(1, *self.config.grid, -1).permute(0, 4, 1, 2, 3)
        pe = F.interpolate(pe, size=grid, mode="trilinear", align_corners=False)
        return pe.permute(0, 2, 3, 4, 1).reshape(1, -1, self.width)

    def _embed_patches(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``(B, N, D)`` patch embeddings and their grid: the ``Conv3d``'s weights applied as one matrix
        product over the non-overlapping patches (the same result, several times faster to train on a CPU)."""
        pz, py, px = self.config.patch_size
        b = image.shape[0]
        grid = (image.shape[2] // pz, image.shape[3] // py, image.shape[4] // px)
        if min(grid) < 1:
            raise ValueError(f"image {tuple(image.shape[2:])} is smaller than one patch {self.config.patch_size}")
        x = image[:, 0, : grid[0] * pz, : grid[1] * py, : grid[2] * px]
        x = x.reshape(b, grid[0], pz, grid[1], py, grid[2], px).permute(0, 1, 3, 5, 2, 4, 6)
        x = x.reshape(b, grid[0] * grid[1] * grid[2], pz * py * px)
        return F.linear(x, self.patch_embed.weight.flatten(1), self.patch_embed.bias), grid

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        """Encode ``image (B, 1, Z, Y, X)``; each axis at least one patch (a remainder is dropped)."""
        if image.ndim != 5 or image.shape[1] != 1:
            raise ValueError(f"image must be (B, 1, Z, Y, X), got {tuple(image.shape)}")
        x, grid = self._embed_patches(image)
        x = x + self._positions(grid)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        covered = [g * p for g, p in zip(grid, self.config.patch_size)]
        return EncoderOutput(
            tokens=x[:, 1:],
            grid=grid,
            positions=grid_positions(grid, covered).to(x.device),
            global_vector=x[:, 0],
        )

    def preprocess(self, volume_hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
        """HU ``(Z, Y, X)`` at ``spacing_zyx`` mm -> ``(1, 1, *input_shape)`` float32 (see the module docstring).

        The array is taken in the node's axial order (:class:`~neuroradix.types.Volume`), as training
        reads it; nothing is reoriented.
        """
        return self._preprocess(volume_hu, spacing_zyx)[0]

    def preprocess_volume(self, volume_hu: np.ndarray, affine: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """:meth:`preprocess` with the spacing read from ``affine``; also returns the input's index -> LPS affine."""
        affine = np.asarray(affine, dtype=np.float64)
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        x, scale, offset = self._preprocess(volume_hu, spacing)
        # input voxel k <- resampled voxel k + offset <- source voxel (k + offset + 0.5) * scale - 0.5
        m = np.eye(4)
        m[:3, :3] = np.diag(scale)
        m[:3, 3] = (np.asarray(offset) + 0.5) * scale - 0.5
        return x, affine @ m

    def _preprocess(
        self, volume_hu: np.ndarray, spacing_zyx: Sequence[float]
    ) -> tuple[torch.Tensor, np.ndarray, list[int]]:
        cfg = self.config
        arr = np.asarray(volume_hu, dtype=np.float32)
        if arr.ndim != 3:
            raise ValueError(f"volume must be (Z, Y, X), got shape {arr.shape}")
        lo, hi = cfg.hu_window
        a, b = cfg.output_range
        t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
        size = [max(1, int(round(n * float(s) / ts))) for n, s, ts in zip(arr.shape, spacing_zyx, cfg.target_spacing)]
        if tuple(size) != arr.shape:
            t = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
        t = (t.clamp(lo, hi) - lo) / (hi - lo) * (b - a) + a
        scale = np.asarray(arr.shape, dtype=np.float64) / np.asarray(size, dtype=np.float64)
        offset = [(n - want) // 2 if n > want else -((want - n) // 2) for n, want in zip(size, cfg.input_shape)]
        return center_crop_or_pad(t, cfg.input_shape, value=a), scale, offset


def center_crop_or_pad(t: torch.Tensor, shape: Sequence[int], value: float) -> torch.Tensor:
    """Crop or pad the last three axes of ``t`` symmetrically (the extra voxel at the far end) to ``shape``."""
    for axis, want in enumerate(shape):
        dim = t.ndim - 3 + axis
        have = t.shape[dim]
        if have > want:
            start = (have - want) // 2
            t = t.narrow(dim, start, want)
        elif have < want:
            before = (want - have) // 2
            pad = [0, 0] * (t.ndim - 1 - dim) + [before, want - have - before]
            t = F.pad(t, pad, value=value)
    return t.contiguous()


def build_vit(**kwargs: Any) -> ViTEncoder:
    """Registry factory: ``build_encoder("vit", width=64, depth=2, ...)`` (keys of :class:`ViTConfig`)."""
    return ViTEncoder(ViTConfig.from_dict(kwargs))


def save_vit(encoder: ViTEncoder, folder: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write ``encoder.json`` (name, config, ``extra``) and ``encoder.pt`` (state dict) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"name": ViTEncoder.name, "width": encoder.width, "config": encoder.config.to_dict(), **(extra or {})}
    (folder / ENCODER_CONFIG).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    torch.save({k: v.detach().cpu() for k, v in encoder.state_dict().items()}, folder / ENCODER_WEIGHTS)
    return folder


def load_vit(folder: Union[str, Path]) -> ViTEncoder:
    """The ViT saved by :func:`save_vit` in ``folder`` (strict state-dict load; ``ValueError`` if not one)."""
    folder = Path(folder)
    cfg_path, weights = folder / ENCODER_CONFIG, folder / ENCODER_WEIGHTS
    if not (cfg_path.is_file() and weights.is_file()):
        raise ValueError(f"{folder}: no saved ViT ({ENCODER_CONFIG} + {ENCODER_WEIGHTS})")
    meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    if meta.get("name") != ViTEncoder.name:
        raise ValueError(f"{cfg_path}: encoder {meta.get('name')!r} is not a ViT")
    encoder = ViTEncoder(ViTConfig.from_dict(meta["config"]))
    encoder.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return encoder
