"""Fixtures that start a real Orthanc (1.12.11+, installed by ``make setup``) and the sidecar on free ports.

The real CTs come from the root conftest (``thorax_volume``, ``abdomen_dicom_dir``): the shared
folder when present, else the public TotalSegmentator sdist, as ``make demo`` gets them.
"""

from __future__ import annotations

import pytest

from tests.harness import EphemeralNode, require_orthanc


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    require_orthanc()
    # Events only: the reconciler's sweep has its own node below, so no sweep races an upload here.
    running = EphemeralNode(tmp_path_factory.mktemp("node"), reconcile_seconds=3600).start()
    yield running
    running.stop()
