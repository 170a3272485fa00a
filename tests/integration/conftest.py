"""Fixtures that start a real Orthanc (Debian's packages) and the sidecar on free ports."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from neuroradix.node.harness import EphemeralNode

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-ct"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc is not installed (make setup installs it)")
    # Events only: the reconciler's sweep has its own node below, so no sweep races an upload here.
    running = EphemeralNode(tmp_path_factory.mktemp("node"), reconcile_seconds=3600).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def thorax_volume():
    from neuroradix.imaging.ctseries import nifti_to_volume
    path = SHARED / "thorax_ct_1.5mm.nii.gz"
    if not path.exists():
        pytest.skip("the shared real chest CT is not present")
    return nifti_to_volume(path)
