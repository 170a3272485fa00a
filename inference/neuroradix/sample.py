"""The demo's input CT: a real thorax CT when one can be found, else the synthetic phantom.

Sources, in order:

1. ``<shared>/data/real-ct/thorax_ct_1.5mm.nii.gz`` (``<shared>`` defaults to ``<repo>/../shared``);
2. the same scan from the ``totalsegmentator==2.18.0`` source distribution on PyPI (Apache-2.0):
   a cached sdist, or one fetched with ``pip download``; only the one member
   :data:`SDIST_MEMBER` is read from the tarball;
3. :func:`neuroradix.phantom.thorax_phantom`, with a logged warning.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Optional

import numpy as np

from .dicom.ctseries import nifti_to_volume
from .errors import BadInputError
from .phantom import thorax_phantom
from .types import Volume

logger = logging.getLogger(__name__)

SHARED_MEMBER = Path("data") / "real-ct" / "thorax_ct_1.5mm.nii.gz"
SDIST_REQUIREMENT = "totalsegmentator==2.18.0"
SDIST_NAME = "totalsegmentator-2.18.0.tar.gz"
SDIST_MEMBER = "totalsegmentator-2.18.0/tests/reference_files/aorta_report/example_ct.nii.gz"
CACHED_NAME = "totalsegmentator-2.18.0_example_ct.nii.gz"


def default_shared_dir() -> Path:
    """``<repo>/../shared`` for a source checkout (``inference/neuroradix/sample.py``)."""
    return Path(__file__).resolve().parents[2].parent / "shared"


def default_cache_dir() -> Path:
    """``$NEURORADIX_CACHE`` or ``~/.cache/neuroradix``."""
    return Path(os.environ.get("NEURORADIX_CACHE", Path.home() / ".cache" / "neuroradix"))


def _download_sdist(cache_dir: Path, timeout_s: float) -> Optional[Path]:
    """Fetch the sdist with pip (no build, no dependencies); None when that fails."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", SDIST_REQUIREMENT, "-d", str(cache_dir)]
    logger.info("downloading %s from PyPI into %s", SDIST_REQUIREMENT, cache_dir)
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("pip download of %s failed: %s", SDIST_REQUIREMENT, exc)
        return None
    path = cache_dir / SDIST_NAME
    return path if path.is_file() else None


def extract_example_ct(sdist: Path, target: Path) -> Path:
    """Copy :data:`SDIST_MEMBER` out of the ``sdist`` tarball to ``target`` (nothing else is unpacked)."""
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            member = archive.getmember(SDIST_MEMBER)
            if not member.isfile():
                raise BadInputError(f"{SDIST_MEMBER} in {sdist.name} is not a regular file")
            source = archive.extractfile(member)
            if source is None:
                raise BadInputError(f"cannot read {SDIST_MEMBER} from {sdist.name}")
            partial = target.with_suffix(".part")
            partial.write_bytes(source.read())
            partial.replace(target)
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise BadInputError(f"{sdist.name}: cannot extract {SDIST_MEMBER}: {exc}") from exc
    return target


def sample_ct_volume(
    shared_dir: Optional[Path] = None,
    *,
    cache_dir: Optional[Path] = None,
    download: bool = True,
    download_timeout_s: float = 300.0,
) -> tuple[Volume, str]:
    """Return the demo CT and a string naming its source.

    Parameters
    ----------
    shared_dir:
        Folder holding ``data/real-ct/``; defaults to ``<repo>/../shared``.
    cache_dir:
        Where the sdist and the extracted scan are kept; defaults to :func:`default_cache_dir`.
    download:
        Allow ``pip download`` from PyPI when nothing is cached.
    download_timeout_s:
        Time limit of the download.

    Returns
    -------
    volume, source:
        ``source`` is ``"shared:<path>"``, ``"totalsegmentator-sdist:<path>"`` or
        ``"phantom"``.
    """
    shared = Path(shared_dir) if shared_dir is not None else default_shared_dir()
    candidate = shared / SHARED_MEMBER
    if candidate.is_file():
        return nifti_to_volume(candidate), f"shared:{candidate}"

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / CACHED_NAME
    try:
        if not cached.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            sdist = cache / SDIST_NAME
            if not sdist.is_file() and download:
                sdist = _download_sdist(cache, download_timeout_s) or sdist
            if sdist.is_file():
                extract_example_ct(sdist, cached)
        if cached.is_file():
            return nifti_to_volume(cached), f"totalsegmentator-sdist:{cached}"
    except (OSError, BadInputError) as exc:
        logger.warning("cannot use the TotalSegmentator example CT: %s", exc)

    logger.warning("no real CT found (looked in %s and %s): using the synthetic thorax phantom", candidate, cache)
    volume, _ = thorax_phantom(shape=(96, 192, 192), spacing=(2.5, 1.8, 1.8))
    return volume, "phantom"


__all__ = ["sample_ct_volume", "even_in_plane", "extract_example_ct", "default_shared_dir", "default_cache_dir", "SDIST_MEMBER"]


def even_in_plane(volume: Volume) -> Volume:
    """Drop the last row and column where needed so that rows and columns are even.

    OHIF 3.13's parametric-map loader (``@cornerstonejs/adapters``) makes a view of frame ``i``
    at byte offset ``i * rows * columns``, which throws a ``RangeError`` for 16- and 32-bit
    pixels unless ``rows * columns`` is a multiple of their size. Clinical CTs (512 x 512) are;
    the TotalSegmentator test CT (167 x 233) is not. Voxel positions do not change.
    """
    _, rows, cols = volume.shape
    return Volume(np.ascontiguousarray(volume.array[:, : rows - rows % 2, : cols - cols % 2]), volume.affine)
