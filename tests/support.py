"""Helpers shared by the tests: real CT files found as a user finds them, and a no-silent-skip rule.

Real CT files come from :func:`neuroradix.samples.real_ct.real_ct_path` (``../shared`` when
present, else the TotalSegmentator sdist from PyPI, cached), exactly as ``make demo`` gets its CT.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from neuroradix.samples.real_ct import SampleUnavailableError, real_ct_path
from neuroradix.types import Volume

IN_CI = bool(os.environ.get("CI"))


def unavailable(reason: str) -> None:
    """Skip with ``reason``; under ``CI`` fail instead, so that nothing is skipped silently there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: a missing tool or file is a failure)")
    pytest.skip(reason)  # only without CI (above: under CI it fails)


def real_ct(name: str) -> Path:
    """The real CT file or folder ``name`` (see ``REAL_CT_FILES``), or skip/fail naming why not."""
    try:
        return real_ct_path(name)
    except SampleUnavailableError as exc:
        unavailable(f"real CT {name} is not available: {exc}")
        raise  # unreachable: unavailable() raises


def real_ct_dir(names: Iterable[str], tmp_dir: Path) -> Path:
    """A folder holding the real CT files ``names`` side by side (as ``shared/data/real-ct`` does).

    Each file is found with :func:`real_ct`; when they all lie in one folder (the shared folder, or
    the cache) that folder is returned, else ``tmp_dir`` is filled with links to them.
    """
    paths = [real_ct(name) for name in names]
    parents = {path.parent for path in paths}
    if len(parents) == 1:
        return parents.pop()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        link = tmp_dir / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    return tmp_dir


def require_module(name: str) -> ModuleType:
    """The imported module ``name`` (an optional extra such as torch), or skip/fail naming it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"the Python package {name} is not installed ({exc}); make setup installs it")
        raise  # unreachable: unavailable() raises


def require_tool(name: str) -> str:
    """Path of the executable ``name``, or skip/fail naming it."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (make setup installs it)")
    return str(path)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def patient_centroid(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """LPS centroid (mm) of ``mask`` on ``volume``'s grid."""
    return volume.index_to_patient(np.argwhere(mask).mean(axis=0))
