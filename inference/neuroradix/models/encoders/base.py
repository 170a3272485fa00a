"""The encoder interface: a volume in, patch tokens on a grid out.

Every image encoder of the node (the SwinUNETR patch embeddings, the pretrained I3ResNet-152s
of Merlin and Astra, the contrastive 3D ViT) is an :class:`Encoder`: ``preprocess`` turns a HU
volume into the network's input the way that encoder was trained, ``forward`` returns an
:class:`EncoderOutput` -- tokens ``(B, N, D)`` on a ``(nz, ny, nx)`` grid, their centres in input
voxels, and one global vector per scan.  The head reads the tokens through its bridge
(``embed_dim`` = the encoder's ``width``, or a projection configured on the head side: the
encoder itself stays frozen and unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from neuroradix.models.sliding import PatchGrid

__all__ = ["EncoderOutput", "Encoder", "grid_positions", "standard_affine", "token_patch_grid"]


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch.

    Attributes
    ----------
    tokens:
        ``(B, N, D)`` patch tokens, C order over ``grid``.
    grid:
        Token grid ``(nz, ny, nx)`` with ``N == nz * ny * nx``, in the input's ``(z, y, x)`` order.
    positions:
        ``(N, 3)`` float token centres in input voxel coordinates ``(z, y, x)``.
    global_vector:
        ``(B, D)`` one vector per scan ([CLS] token or mean-pooled tokens).
    """

    tokens: torch.Tensor
    grid: tuple[int, int, int]
    positions: torch.Tensor
    global_vector: torch.Tensor

    def __post_init__(self) -> None:
        n = int(np.prod(self.grid))
        if self.tokens.ndim != 3 or self.tokens.shape[1] != n:
            raise ValueError(f"tokens must be (B, {n}, D) for grid {self.grid}, got {tuple(self.tokens.shape)}")
        if tuple(self.positions.shape) != (n, 3):
            raise ValueError(f"positions must be ({n}, 3), got {tuple(self.positions.shape)}")
        if tuple(self.global_vector.shape) != (self.tokens.shape[0], self.tokens.shape[2]):
            raise ValueError(f"global_vector must be (B, D), got {tuple(self.global_vector.shape)}")


class Encoder(nn.Module):
    """Abstract image encoder (see the module docstring).

    Subclasses set ``name`` (the registry key) and ``width`` (``D``) and implement
    :meth:`forward` and :meth:`preprocess`.
    """

    name: str = ""
    width: int = 0

    def forward(self, image: torch.Tensor) -> EncoderOutput:  # pragma: no cover - abstract
        """Encode ``image (B, C, Z, Y, X)``, already preprocessed by :meth:`preprocess`."""
        raise NotImplementedError

    def preprocess(
        self, volume_hu: np.ndarray, spacing_zyx: tuple[float, float, float]
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """HU volume ``(Z, Y, X)`` with voxel size ``spacing_zyx`` (mm) -> network input ``(1, C, Z', Y', X')``."""
        raise NotImplementedError

    def preprocess_volume(self, volume_hu: np.ndarray, affine: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """HU volume with its index -> LPS ``affine`` -> ``(input (1, C, Z', Y', X'), input index -> LPS)``.

        The geometry lets the node put token attention back on the scan (:func:`token_patch_grid`).
        """
        raise NotImplementedError(f"encoder {self.name!r} does not map its input back to patient space")

    def patch_grid(self, out: EncoderOutput, input_shape: Sequence[int], input_affine: np.ndarray) -> PatchGrid:
        """Where each token of ``out`` lies on the input grid, as a :class:`PatchGrid` (attention maps)."""
        return token_patch_grid(out.grid, input_shape, input_affine)


def standard_affine(spacing_zyx: Sequence[float]) -> np.ndarray:
    """Index (slice, row, column) -> LPS of an axial stack in the usual order (slices +S, rows +P, columns +L)."""
    dz, dy, dx = (float(s) for s in spacing_zyx)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[0.0, 0.0, dx], [0.0, dy, 0.0], [dz, 0.0, 0.0]])
    return aff


def token_patch_grid(grid: Sequence[int], input_shape: Sequence[int], input_affine: np.ndarray) -> PatchGrid:
    """A regular token grid over ``input_shape`` as a :class:`PatchGrid` of one-cell patches.

    The patch grid's "network grid" is the token grid itself (one voxel per token, cell size
    ``input_shape / grid`` input voxels), so :meth:`PatchGrid.stitch` spreads token weights over
    any target geometry and :meth:`PatchGrid.positions` gives token centres in 0..1.
    """
    cell = np.asarray(input_shape, dtype=np.float64) / np.asarray(grid, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(cell)
    m[:3, 3] = 0.5 * cell - 0.5  # token i's centre is input voxel (i + 0.5) * cell - 0.5
    starts = tuple(tuple(range(int(n))) for n in grid)
    shape = (int(grid[0]), int(grid[1]), int(grid[2]))
    return PatchGrid(starts, 1, shape, np.asarray(input_affine, dtype=np.float64) @ m)  # type: ignore[arg-type]


def grid_positions(grid: Sequence[int], input_shape: Sequence[int]) -> torch.Tensor:
    """Centres ``(N, 3)`` of a regular token grid covering ``input_shape`` voxels, C order.

    Token ``i`` along an axis of ``n`` tokens over ``S`` voxels covers ``[i*S/n, (i+1)*S/n)``, so
    its centre is ``(i + 0.5) * S / n - 0.5`` (voxel centres at integer coordinates).
    """
    if len(grid) != 3 or len(input_shape) != 3:
        raise ValueError("grid and input_shape must have 3 axes")
    axes = [(torch.arange(n, dtype=torch.float32) + 0.5) * (float(s) / n) - 0.5 for n, s in zip(grid, input_shape)]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)
