"""Transforms shared by training and inference, so both feed the network the same input.

* :func:`preprocess_volume` turns a :class:`~neuroradix.types.Volume` into the network grid
  (orientation, resampling, HU window) and remembers how to go back
  (:meth:`NetworkGrid.labels_to_source`).
* ``AddGlobalResized`` / ``AppendGlobalChannel`` build the two-channel input: the whole scan
  resized to the window size, appended to every local window.
* ``RemapLabels`` maps any source label scheme to the 43 classes; ``LoadEmbeddingd`` loads a
  stage-2 embedding file.

Array transforms work on channel-first tensors ``[C, D, H, W]``; each dictionary variant
(MONAI's ``...d`` naming, also exported as ``...D`` and ``...Dict``) holds one array transform
and loops over its keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from neuroradix.errors import BadInputError
from neuroradix.models.config import PreprocessConfig
from neuroradix.models.embeddings import load_embeddings
from neuroradix.models.remap import LabelRemap, load_remap
from neuroradix.types import Volume

logger = logging.getLogger(__name__)


def _key_list(keys: Union[Hashable, Sequence[Hashable]]) -> list[Hashable]:
    """``keys`` as a list: one ``str``/``int`` key becomes a list of one (MONAI's convention)."""
    if isinstance(keys, str | int) or not isinstance(keys, Sequence):
        return [keys]
    return list(keys)


__all__ = [
    "NetworkGrid",
    "preprocess_volume",
    "normalise_hu",
    "AddGlobalResized",
    "AddGlobalResizedd",
    "AddGlobalResizedD",
    "AddGlobalResizedDict",
    "AppendGlobalChannel",
    "AppendGlobalChanneld",
    "AppendGlobalChannelD",
    "AppendGlobalChannelDict",
    "RemapLabels",
    "RemapLabelsd",
    "RemapLabelsD",
    "RemapLabelsDict",
    "LoadEmbeddingd",
    "LoadEmbeddingD",
    "LoadEmbeddingDict",
]

_LETTER = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


@dataclass(frozen=True)
class NetworkGrid:
    """Where the network grid lies and how it was made from the source grid.

    ``array`` index ``[i, j, k]`` of the network grid is source index
    ``perm``-permuted and ``flip``-mirrored, then scaled: network voxel ``n`` along axis ``a``
    covers reoriented source coordinate ``(n + 0.5) * scale[a] - 0.5`` (``align_corners=False``).
    """

    array: np.ndarray  # float32, normalised, network grid
    affine: np.ndarray  # 4x4 network index -> LPS mm
    source_shape: tuple[int, int, int]
    perm: tuple[int, int, int]  # network axis a comes from source axis perm[a]
    flip: tuple[bool, bool, bool]  # per network axis
    scale: tuple[float, float, float]  # reoriented source voxels per network voxel

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    def labels_to_source(self, labels: np.ndarray) -> np.ndarray:
        """Nearest-neighbour a label map on the network grid back onto the source grid."""
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise ValueError(f"labels have shape {labels.shape}, the network grid is {self.shape}")
        reo_shape = [self.source_shape[p] for p in self.perm]
        idx = []
        for a in range(3):
            n_src, n_net = reo_shape[a], self.shape[a]
            i = np.floor((np.arange(n_src) + 0.5) / self.scale[a]).astype(np.int64)
            idx.append(np.clip(i, 0, n_net - 1))
        out = labels[np.ix_(*idx)]
        for a in range(3):
            if self.flip[a]:
                out = np.flip(out, axis=a)
        inv = np.argsort(self.perm)
        return np.ascontiguousarray(np.transpose(out, inv))


def _orientation_transform(affine: np.ndarray, orientation: Optional[str]):
    if orientation is None:
        return (0, 1, 2), (False, False, False)
    dirs = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    dominant = np.argmax(np.abs(dirs), axis=0)  # LPS axis of each source axis
    if len(set(dominant.tolist())) != 3:
        raise BadInputError("volume axes are too oblique to map onto patient axes (two axes share a direction)")
    perm, flip = [], []
    for letter in orientation:
        lps_axis, sign = _LETTER[letter]
        src = int(np.nonzero(dominant == lps_axis)[0][0])
        perm.append(src)
        flip.append(bool(np.sign(dirs[lps_axis, src]) != sign))
    return tuple(perm), tuple(flip)


def normalise_hu(array, cfg: PreprocessConfig):
    """Clip to the HU window and map linearly onto ``cfg.output_range`` (numpy or torch)."""
    lo, hi = cfg.hu_window
    a, b = cfg.output_range
    clipped = array.clip(lo, hi)
    return (clipped - lo) * ((b - a) / (hi - lo)) + a


def preprocess_volume(volume: Volume, cfg: PreprocessConfig, device: str = "cpu") -> NetworkGrid:
    """Reorient, resample (trilinear) and window a CT volume onto the network grid.

    Parameters
    ----------
    volume:
        Source CT in HU with its LPS affine.
    cfg:
        The model's preprocessing; ``target_spacing`` keeps the field of view and changes the
        voxel size, ``target_shape`` resizes to a fixed grid.
    """
    if not isinstance(cfg, PreprocessConfig):
        raise TypeError(f"cfg must be a PreprocessConfig, got {type(cfg).__name__}")
    perm, flip = _orientation_transform(volume.affine, cfg.orientation)
    arr = np.transpose(np.asarray(volume.array, dtype=np.float32), perm)
    aff = volume.affine.copy()
    aff[:, :3] = volume.affine[:, list(perm)]
    for a in range(3):
        if flip[a]:
            arr = np.flip(arr, axis=a)
            aff[:3, 3] = aff[:3, 3] + aff[:3, a] * (arr.shape[a] - 1)
            aff[:3, a] = -aff[:3, a]
    reo_shape = arr.shape
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    if cfg.target_spacing is not None:
        new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(reo_shape, spacing, cfg.target_spacing))
    else:
        new_shape = tuple(cfg.target_shape)  # type: ignore[arg-type]
    sz, sy, sx = (float(n) / float(m) for n, m in zip(reo_shape, new_shape))
    scale = (sz, sy, sx)
    if new_shape != tuple(reo_shape):
        t = torch.from_numpy(np.ascontiguousarray(arr))[None, None].to(device)
        arr = F.interpolate(t, size=new_shape, mode="trilinear", align_corners=False)[0, 0].cpu().numpy()
    m = np.eye(4)
    for a in range(3):
        m[a, a] = scale[a]
        m[a, 3] = 0.5 * scale[a] - 0.5
    net_aff = aff @ m
    out = normalise_hu(np.ascontiguousarray(arr, dtype=np.float32), cfg).astype(np.float32)
    return NetworkGrid(out, net_aff, volume.shape, perm, flip, scale)


# --------------------------------------------------------------------------- global channel
class AddGlobalResized:
    """The whole image resized to ``size^3`` (trilinear): the global-context channel.

    ``__call__`` takes a channel-first ``[C, D, H, W]`` tensor or array and returns ``[C, s, s, s]``.
    """

    def __init__(self, size: int = 96, mode: str = "trilinear") -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.size = size
        self.mode = mode

    def __call__(self, img):
        t = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img)
        if t.ndim != 4:
            raise ValueError(f"expected a channel-first [C, D, H, W] image, got shape {tuple(t.shape)}")
        out = F.interpolate(t[None].float(), size=(self.size,) * 3, mode=self.mode, align_corners=False)[0]
        return out.to(t.dtype) if t.is_floating_point() else out


class AddGlobalResizedd:
    """Dictionary variant: ``data[global_key] = AddGlobalResized(size)(data[key])``."""

    def __init__(
        self,
        keys: Union[Hashable, Sequence[Hashable]] = "image",
        global_key: str = "global",
        size: int = 96,
        mode: str = "trilinear",
    ) -> None:
        self.keys = _key_list(keys)
        if len(self.keys) != 1:
            raise ValueError("AddGlobalResizedd takes exactly one key (the whole image)")
        self.global_key = global_key
        self.op = AddGlobalResized(size, mode)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        d[self.global_key] = self.op(d[self.keys[0]])
        return d


class AppendGlobalChannel:
    """Append the global channel to a local window: ``[C, r, r, r] + [G, r, r, r] -> [C+G, r, r, r]``."""

    def __call__(self, patch, global_img):
        p = torch.as_tensor(patch)
        g = torch.as_tensor(global_img).to(p.dtype)
        if p.shape[1:] != g.shape[1:]:
            raise ValueError(f"patch {tuple(p.shape)} and global image {tuple(g.shape)} differ in spatial size")
        return torch.cat([p, g], dim=0)


class AppendGlobalChanneld:
    """Dictionary variant: for every key, ``data[key] = cat(data[key], data[global_key])``."""

    def __init__(
        self, keys: Union[Hashable, Sequence[Hashable]] = "image", global_key: str = "global", drop_global: bool = True
    ) -> None:
        self.keys = _key_list(keys)
        self.global_key = global_key
        self.drop_global = drop_global
        self.op = AppendGlobalChannel()

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.keys:
            d[key] = self.op(d[key], d[self.global_key])
        if self.drop_global:
            d.pop(self.global_key, None)
        return d


# --------------------------------------------------------------------------- labels
class RemapLabels:
    """Map a source label map (e.g. TotalSegmentator's 117 classes) to the 43 chest-CT classes."""

    def __init__(self, table: Union[str, Path, LabelRemap] = "totalseg117-to-chest-ct-43") -> None:
        self.table = table if isinstance(table, LabelRemap) else load_remap(table)

    def __call__(self, labels):
        return self.table.apply(labels)


class RemapLabelsd:
    """Dictionary variant of :class:`RemapLabels`."""

    def __init__(
        self,
        keys: Union[Hashable, Sequence[Hashable]] = "label",
        table: Union[str, Path, LabelRemap] = "totalseg117-to-chest-ct-43",
    ) -> None:
        self.keys = _key_list(keys)
        self.op = RemapLabels(table)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.keys:
            d[key] = self.op(d[key])
        return d


class LoadEmbeddingd:
    """Load stage-2 embedding files written by :func:`neuroradix.models.embeddings.save_embeddings`.

    ``data[key]`` is a path; afterwards it is the ``[num_patches, D]`` float tensor and
    ``data[f"{key}_positions"]`` the ``[num_patches, 3]`` patch positions.
    """

    def __init__(
        self, keys: Union[Hashable, Sequence[Hashable]] = "embedding", positions_suffix: str = "_positions"
    ) -> None:
        self.keys = _key_list(keys)
        self.positions_suffix = positions_suffix

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.keys:
            emb = load_embeddings(d[key])
            d[key] = emb.embeddings
            d[f"{key}{self.positions_suffix}"] = emb.positions
        return d


AddGlobalResizedD = AddGlobalResizedDict = AddGlobalResizedd
AppendGlobalChannelD = AppendGlobalChannelDict = AppendGlobalChanneld
RemapLabelsD = RemapLabelsDict = RemapLabelsd
LoadEmbeddingD = LoadEmbeddingDict = LoadEmbeddingd
