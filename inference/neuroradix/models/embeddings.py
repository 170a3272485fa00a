"""Stage-2 export: per-scan patch embeddings ``[num_patches, 24*feature_size]`` with positions.

A file is a ``torch.save`` of plain tensors and JSON-like values, read back with
``weights_only=True`` (no pickled code)::

    {"format": "neuroradix-embeddings/1",
     "embeddings": float32 [P, D], "positions": float32 [P, 3] (patch centres, 0..1 per axis),
     "starts": int64 [P, 3] (window start on the network grid), "grid": PatchGrid.to_dict(),
     "meta": {...}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from neuroradix.models.sliding import PatchGrid

__all__ = ["EMBEDDING_FORMAT", "EmbeddingFile", "save_embeddings", "load_embeddings"]

EMBEDDING_FORMAT = "neuroradix-embeddings/1"


@dataclass
class EmbeddingFile:
    embeddings: torch.Tensor
    positions: torch.Tensor
    grid: Optional[PatchGrid] = None
    meta: dict = field(default_factory=dict)


def save_embeddings(
    path: Union[str, Path], embeddings: torch.Tensor, grid: PatchGrid, meta: Optional[dict] = None
) -> Path:
    """Write one scan's patch embeddings (rows in the grid's C order) and positions."""
    emb = torch.as_tensor(embeddings).detach().float().cpu()
    if emb.ndim != 2 or emb.shape[0] != len(grid):
        raise ValueError(f"embeddings must be [{len(grid)}, D] for this grid, got {tuple(emb.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": EMBEDDING_FORMAT,
            "embeddings": emb.contiguous(),
            "positions": torch.from_numpy(grid.positions()),
            "starts": torch.from_numpy(grid.patch_starts()),
            "grid": grid.to_dict(),
            "meta": dict(meta or {}),
        },
        path,
    )
    return path


def load_embeddings(path: Union[str, Path]) -> EmbeddingFile:
    """Read a file written by :func:`save_embeddings` (``ValueError`` if it is not one)."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != EMBEDDING_FORMAT:
        raise ValueError(f"{path}: not a {EMBEDDING_FORMAT} file")
    emb, pos = data["embeddings"], data["positions"]
    if emb.ndim != 2 or pos.shape != (emb.shape[0], 3):
        raise ValueError(f"{path}: embeddings {tuple(emb.shape)} and positions {tuple(pos.shape)} do not match")
    grid = PatchGrid.from_dict(data["grid"]) if data.get("grid") else None
    return EmbeddingFile(emb.float(), pos.float(), grid, dict(data.get("meta", {})))
