"""Fixtures of the deployment tests: the Orthanc the node runs (installed by ``make setup``)."""

from __future__ import annotations

import pytest

from neuroradix.config import DeploySettings
from neuroradix.deploy.orthanc_dist import OrthancDist, OrthancDistSettings, find_orthanc
from neuroradix.errors import ConfigError
from tests.support import unavailable


@pytest.fixture(scope="session")
def orthanc_dist() -> OrthancDist:
    """The Orthanc ``make up`` would run (skip without one; under CI a failure)."""
    try:
        return find_orthanc(OrthancDistSettings.from_settings(DeploySettings()))
    except ConfigError as exc:
        unavailable(f"no Orthanc to run: {exc}")
        raise  # unreachable: unavailable() raises
