"""Preprocessing of a scan onto the network grid, cached once to disk.

The geometry and intensity steps follow the model's recorded
:class:`neuroradix.models.config.PreprocessConfig` (orientation, target spacing or shape,
HU window -> output range), applied identically to the image (trilinear) and to the label map
(nearest neighbour), so training sees what inference sees. The cache key is a hash of the
source file, its size and mtime, the preprocessing config and the remap table, so changing
any of them re-preprocesses; results are ``.npz`` files (float16 image, uint8 labels).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from neuroradix.errors import BadInputError
from neuroradix.models.transforms import preprocess_volume
from neuroradix.types import Volume
from neuroradix_train.data.dataset import load_label_map, load_volume

logger = logging.getLogger(__name__)


def labels_to_grid(labels: np.ndarray, grid) -> np.ndarray:
    """Put a label map of the source grid onto a :class:`~neuroradix.models.transforms.NetworkGrid`.

    The same permutation and flips as the image, then nearest neighbour (``nearest-exact``
    samples source voxel ``floor((n + 0.5) * scale)``, the centre rule of the trilinear image).
    """
    lab = np.transpose(np.asarray(labels), grid.perm)
    for axis, flip in enumerate(grid.flip):
        if flip:
            lab = np.flip(lab, axis)
    if tuple(lab.shape) != grid.shape:
        t = torch.from_numpy(np.ascontiguousarray(lab).astype(np.float32))[None, None]
        lab = F.interpolate(t, size=grid.shape, mode="nearest-exact")[0, 0].numpy()
    return np.ascontiguousarray(lab).astype(np.uint8)


def preprocess(
    volume: Volume, pcfg, labels: Optional[np.ndarray] = None
) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Volume (HU) [+ label map on its grid] -> normalised image [+ labels] on the network grid.

    The image goes through :func:`neuroradix.models.transforms.preprocess_volume`, the very
    function the node uses at inference. Returns ``(image, labels_or_None, affine)``.
    """
    grid = preprocess_volume(volume, pcfg)
    lab = labels_to_grid(labels, grid) if labels is not None else None
    return grid.array, lab, grid.affine


def cache_key(source: Path, pcfg_dict: dict, remap_name: Optional[str], intensity: str) -> str:
    st = Path(source).stat()
    blob = json.dumps(
        [str(Path(source).resolve()), st.st_size, int(st.st_mtime), pcfg_dict, remap_name, intensity], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_preprocess(
    record, pcfg, cache_dir: Path, *, remap=None, intensity: str = "auto", with_labels: bool = True
) -> dict:
    """Preprocess one :class:`~neuroradix_train.data.dataset.ScanRecord` once and keep it in ``cache_dir``.

    Returns ``{"image": (1, D, H, W) float32, "label": (1, D, H, W) uint8 or absent, "affine": 4x4}``.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    use_labels = with_labels and record.segmentation is not None
    key = cache_key(record.path, pcfg.to_dict(), getattr(remap, "name", None) if use_labels else None, intensity)
    path = cache_dir / f"{record.stem}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            out = {"image": z["image"].astype(np.float32)[None], "affine": z["affine"]}
            if "label" in z:
                out["label"] = z["label"][None]
            return out
    vol = load_volume(record, intensity=intensity)
    labels = None
    if use_labels:
        labels = load_label_map(record.segmentation)
        if labels.shape != vol.shape:
            raise BadInputError(f"{record.segmentation}: shape {labels.shape} differs from its volume {vol.shape}")
        if remap is not None:
            labels = remap.apply(labels)
    image, lab, aff = preprocess(vol, pcfg, labels)
    tmp = path.with_suffix(".tmp.npz")
    if lab is None:
        np.savez(tmp, image=image.astype(np.float16), affine=aff)
    else:
        np.savez(tmp, image=image.astype(np.float16), affine=aff, label=lab)
    tmp.replace(path)
    out = {"image": image[None], "affine": aff}
    if lab is not None:
        out["label"] = lab[None]
    return out
