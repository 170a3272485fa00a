"""Fixtures of the lung analyzer, phantom and CT series tests: data with known geometry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuroradix.analyzers.lung import LungAnalyzer
from neuroradix.phantom import thorax_phantom
from neuroradix.types import StudyResult, Volume

REAL_CT = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-ct"
THORAX = REAL_CT / "thorax_ct_1.5mm.nii.gz"
ABDOMEN = REAL_CT / "abdomen_ct_3mm.nii.gz"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def patient_centroid(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """LPS centroid (mm) of ``mask`` on ``volume``'s grid."""
    return volume.index_to_patient(np.argwhere(mask).mean(axis=0))


@pytest.fixture(scope="session")
def analyzer() -> LungAnalyzer:
    return LungAnalyzer()


@pytest.fixture(scope="session")
def emphysema_phantom() -> tuple[Volume, dict[str, np.ndarray]]:
    """Axial phantom with 10 % of the lung voxels planted below -950 HU."""
    return thorax_phantom(emphysema=0.10, seed=3)


@pytest.fixture(scope="session")
def emphysema_result(analyzer: LungAnalyzer, emphysema_phantom) -> StudyResult:
    return analyzer.analyze(emphysema_phantom[0])


@pytest.fixture(scope="session")
def thorax_volume() -> Volume:
    if not THORAX.is_file():
        pytest.skip(f"real CT not available at {THORAX}")
    from neuroradix.dicom.ctseries import nifti_to_volume

    return nifti_to_volume(THORAX)


@pytest.fixture(scope="session")
def thorax_result(analyzer: LungAnalyzer, thorax_volume: Volume) -> StudyResult:
    return analyzer.analyze(thorax_volume)
