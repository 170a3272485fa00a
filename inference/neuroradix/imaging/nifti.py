"""The one conversion between NIfTI (RAS, voxel axes ``i, j, k``) and a CT :class:`Volume`.

NIfTI affines map voxel indices to RAS millimetres; this project's volumes are arrays
``[slice, row, column]`` with an index-to-LPS affine (see :mod:`neuroradix.types`). Reading
flips x and y (RAS -> LPS) and then reorders and flips the voxel axes into a conventional axial
stack with :func:`~neuroradix.imaging.ctseries.axial_axes`, so every voxel keeps its patient
coordinate. Writing is the exact inverse up to the axis order: NIfTI axes ``(i, j, k)`` are the
volume's ``(column, row, slice)`` and LPS -> RAS flips x and y.

The node (``neuroradix analyze``'s ``labels.nii.gz``, the API's label-map download, the real
test CTs) and training (CT-RATE volumes and their segmentations) both go through
:func:`array_to_volume`, so a scan and its label map land on the same grid whichever side reads
them.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import nibabel as nib
import numpy as np

from neuroradix.errors import BadInputError
from neuroradix.imaging.ctseries import axial_axes, reorient
from neuroradix.types import Volume

logger = logging.getLogger(__name__)

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Flips x and y: RAS <-> LPS (its own inverse)."""

_IJK_TO_SRC = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
"""Swaps the first and third voxel axes: (slice, row, column) <-> (i, j, k) = (column, row, slice)."""

_INT16 = np.iinfo(np.int16)


def array_to_volume(
    data_ijk: np.ndarray,
    affine_ras: np.ndarray,
    spacing_zyx: Optional[Sequence[float]] = None,
) -> Volume:
    """Turn a NIfTI voxel array and its RAS affine into an axial LPS :class:`Volume`.

    Parameters
    ----------
    data_ijk:
        The 3-D voxel array as stored (axes ``i, j, k``); its values and dtype are kept.
    affine_ras:
        4x4 index-to-RAS affine of the image.
    spacing_zyx:
        Optional voxel size ``(slice, row, column)`` in mm that replaces the header's (CT-RATE's
        metadata CSV is more reliable than some of its headers); the directions stay the header's.
        It is given for the NIfTI axes ``(k, j, i)`` before the axes are reordered.

    Returns
    -------
    Volume
        Slices inferior to superior, rows anterior to posterior, columns patient right to left
        (the closest axes for oblique grids), as a contiguous array.

    Raises
    ------
    ValueError
        ``data_ijk`` is not 3-D, ``affine_ras`` not 4x4, or ``spacing_zyx`` not three positive sizes.
    """
    data_ijk = np.asarray(data_ijk)
    if data_ijk.ndim != 3:
        raise ValueError(f"data_ijk must be a 3-D array, got shape {data_ijk.shape}")
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    if affine_ras.shape != (4, 4):
        raise ValueError(f"affine_ras must be 4x4, got shape {affine_ras.shape}")
    lps = RAS_TO_LPS @ affine_ras
    if spacing_zyx is not None:
        spacing = np.asarray(spacing_zyx, dtype=np.float64)
        if spacing.shape != (3,) or not np.all(spacing > 0):
            raise ValueError(f"spacing_zyx must be three positive sizes, got {spacing_zyx!r}")
        norms = np.linalg.norm(lps[:3, :3], axis=0)
        norms[norms == 0] = 1.0
        lps[:3, :3] = lps[:3, :3] / norms * spacing[::-1]  # (i, j, k) = (column, row, slice)
    order, flips = axial_axes(lps)
    array, affine = reorient(data_ijk, lps, order, flips)
    return Volume(np.ascontiguousarray(array), affine)


def nifti_to_volume(path: Union[str, Path]) -> Volume:
    """Read a NIfTI CT into a :class:`~neuroradix.types.Volume` (HU, LPS, axial order).

    Parameters
    ----------
    path:
        A ``.nii`` or ``.nii.gz`` file holding one 3-D image (trailing singleton dimensions are
        accepted). Scaling (``scl_slope``/``scl_inter``) is applied.

    Returns
    -------
    Volume
        Integral data that fits is kept as ``int16``, anything else becomes ``float32``. The axes
        are reordered by :func:`array_to_volume`; every voxel keeps its patient coordinate.

    Raises
    ------
    BadInputError
        The file cannot be read, is not 3-D, or has neither an sform nor a qform.
    """
    path = Path(path)
    try:
        image = nib.load(str(path))
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise TypeError(f"not a NIfTI image but {type(image).__name__}")
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises a variety of errors for broken files
        raise BadInputError(f"cannot read NIfTI file {path.name}: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadInputError(f"{path.name}: expected a 3-D image, got shape {data.shape}")
    header = image.header
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        raise BadInputError(f"{path.name}: neither sform nor qform is set, the geometry is unknown")
    if np.issubdtype(data.dtype, np.integer) and data.min() >= _INT16.min and data.max() <= _INT16.max:
        data = data.astype(np.int16, copy=False)
    elif data.dtype != np.float32:
        data = data.astype(np.float32)
    volume = array_to_volume(data, image.affine)
    logger.debug("read %s: shape %s -> %s", path.name, data.shape, volume.shape)
    return volume


def volume_to_nifti(array: np.ndarray, affine: np.ndarray, dtype: Optional[np.dtype] = None) -> nib.Nifti1Image:
    """A ``[slice, row, column]`` array with an index-to-LPS affine as a NIfTI image (RAS affine).

    Parameters
    ----------
    array:
        Voxel values on the volume's grid (a CT, a label map, a probability map).
    affine:
        The volume's 4x4 index-to-LPS affine.
    dtype:
        Stored type; by default float arrays become ``float32`` and integer arrays (label maps)
        the smallest of ``uint8``/``uint16`` that holds them (``int16`` when they are negative).

    Returns
    -------
    nibabel.Nifti1Image
        Axes ``(i, j, k)`` = (column, row, slice), sform and qform set, units mm.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be 3-D [slice, row, column], got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    data = np.transpose(array, (2, 1, 0))
    if dtype is None:
        if np.issubdtype(data.dtype, np.floating):
            dtype = np.dtype(np.float32)
        elif data.size and int(data.min()) < 0:
            dtype = np.dtype(np.int16)
        else:
            dtype = np.dtype(np.uint8 if int(data.max(initial=0)) < 256 else np.uint16)
    image = nib.Nifti1Image(data.astype(dtype), RAS_TO_LPS @ affine @ _IJK_TO_SRC)
    image.header.set_xyzt_units("mm")
    return image


def volume_to_nifti_bytes(array: np.ndarray, affine: np.ndarray, dtype: Optional[np.dtype] = None) -> bytes:
    """:func:`volume_to_nifti` as the bytes of a ``.nii.gz`` file (gzip level 6)."""
    return gzip.compress(volume_to_nifti(array, affine, dtype).to_bytes(), compresslevel=6)


__all__ = ["RAS_TO_LPS", "array_to_volume", "nifti_to_volume", "volume_to_nifti", "volume_to_nifti_bytes"]
