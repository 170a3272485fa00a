"""Array helpers of the lung analyzer: block means and sums, nearest-neighbour upsampling, and mask
operations (largest component, per-slice hole filling, nearest-seed splitting)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage


def blocks(shape: tuple[int, ...], factors: tuple[int, int, int]) -> tuple[int, int, int]:
    """Number of blocks of size ``factors`` needed to cover ``shape`` (ceiling division per axis)."""
    return tuple(-(-n // f) for n, f in zip(shape, factors))  # type: ignore[return-value]


def _block_reduce(array: np.ndarray, factors: tuple[int, int, int], mean: bool) -> np.ndarray:
    """Block mean or sum (float32) over ``factors``; edges are padded by replication (mean) or zeros.

    Works slab by slab and sums one axis at a time (much faster than a 6-D reshape reduction).
    """
    out_shape = blocks(array.shape, factors)
    if tuple(factors) == (1, 1, 1):
        return array.astype(np.float32)
    out = np.empty(out_shape, dtype=np.float32)
    f0, f1, f2 = factors
    step = max(1, 16 // f0)
    for o in range(0, out_shape[0], step):
        k = min(step, out_shape[0] - o)
        sub = array[o * f0 : (o + k) * f0].astype(np.float32)
        pad = [(0, k * f0 - sub.shape[0]), (0, out_shape[1] * f1 - sub.shape[1]), (0, out_shape[2] * f2 - sub.shape[2])]
        if any(p[1] for p in pad):
            sub = np.pad(sub, pad, mode="edge" if mean else "constant")
        acc = sub.reshape(k, f0, *sub.shape[1:]).sum(axis=1)
        acc = acc.reshape(k, out_shape[1], f1, acc.shape[2]).sum(axis=2)
        acc = acc.reshape(k, out_shape[1], out_shape[2], f2).sum(axis=3)
        out[o : o + k] = acc / np.float32(f0 * f1 * f2) if mean else acc
    return out


def block_mean(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean over blocks of ``factors`` voxels (float32)."""
    return _block_reduce(array, factors, mean=True)


def block_sum(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Sum over blocks of ``factors`` voxels (float32), e.g. voxel counts of a mask."""
    return _block_reduce(array, factors, mean=False)


def upsample(array: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour inverse of :func:`block_mean`: repeat each block, crop to ``shape``."""
    f0, f1, f2 = factors
    in_plane = np.repeat(np.repeat(array, f1, axis=1), f2, axis=2)[:, : shape[1], : shape[2]]
    out = np.empty(shape, dtype=array.dtype)
    for k in range(f0):
        target = out[k::f0]
        target[...] = in_plane[: target.shape[0]]
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of ``mask`` (empty if ``mask`` is empty)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every slice (axis 0) at once: background connects only within a slice."""
    objects = ndimage.find_objects(mask.astype(np.uint8))
    if not objects:
        return mask.copy()
    box = objects[0]
    padded = np.pad(mask[box], ((1, 1), (0, 0), (0, 0)))
    return paste(mask.shape, box, ndimage.binary_fill_holes(padded, structure=_IN_PLANE)[1:-1])


def nearest_seed_split(
    mask: np.ndarray, labels: np.ndarray, keep: np.ndarray, spacing: Optional[np.ndarray] = None
) -> list[np.ndarray]:
    """Share ``mask`` among the regions ``keep`` of ``labels``: each voxel goes to the nearest one.

    The seeds are eroded lungs, so what is left to share is a thin border (and the junction
    between the lungs), where the nearest seed in millimetres is the right lung to give it to.
    """
    seeds = np.zeros(mask.shape, dtype=np.int16)
    for i, value in enumerate(keep, start=1):
        seeds[labels == value] = i
    index = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_distances=False, return_indices=True)
    nearest = seeds[tuple(index)]
    return [(nearest == i) & mask for i in range(1, len(keep) + 1)]


def paste(shape: tuple[int, ...], box: tuple[slice, ...], part: np.ndarray) -> np.ndarray:
    """A boolean array of ``shape`` holding ``part`` at ``box`` and False elsewhere."""
    out = np.zeros(shape, dtype=bool)
    out[box] = part
    return out


__all__ = [
    "block_mean",
    "block_sum",
    "blocks",
    "upsample",
    "largest_component",
    "fill_holes_per_slice",
    "nearest_seed_split",
    "paste",
]
