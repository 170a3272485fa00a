"""Fixtures of the lung analyzer, phantom and CT series tests: data with known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from neuroradix.analyzers.lung import LungAnalyzer
from neuroradix.samples.phantom import thorax_phantom
from neuroradix.types import StudyResult, Volume


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
def thorax_result(analyzer: LungAnalyzer, thorax_volume: Volume) -> StudyResult:
    return analyzer.analyze(thorax_volume)
