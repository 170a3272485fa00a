"""Fixtures shared by every test folder (the real CTs, loaded once per session), and the rule
that under ``CI`` no test is skipped: a skip, for whatever reason, is reported as a failure.

Tests marked ``smoke`` are deselected by ``-m 'not smoke'`` (pyproject's addopts), not skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from neuroradix.imaging.nifti import nifti_to_volume
from neuroradix.types import Volume
from tests.peers import HttpPeer, MllpPeer, free_closed_port, http_receiver, mllp_listener
from tests.support import IN_CI, real_ct


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return f"{longrepr[2]} ({longrepr[0]}:{longrepr[1]})"
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Under ``CI``, report a skipped test as failed, naming the skip reason (xfail is left alone)."""
    report: pytest.TestReport = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (a skip is a failure when $CI is set): {reason}"
    return report


@pytest.fixture(scope="session")
def thorax_path() -> Path:
    """The real contrast chest CT (NIfTI, 1.5 mm)."""
    return real_ct("thorax_ct_1.5mm.nii.gz")


@pytest.fixture(scope="session")
def abdomen_path() -> Path:
    """The real 3 mm abdominal CT (NIfTI, RAS) with a TotalSegmentator reference segmentation."""
    return real_ct("abdomen_ct_3mm.nii.gz")


@pytest.fixture(scope="session")
def abdomen_dicom_dir() -> Path:
    """The real 20-slice JPEG 2000 CT DICOM series."""
    return real_ct("abdomen_ct_dicom_jpeg2000")


@pytest.fixture(scope="session")
def thorax_volume(thorax_path: Path) -> Volume:
    return nifti_to_volume(thorax_path)


@pytest.fixture(scope="session")
def test_release(tmp_path_factory):
    """A tiny untrained weights release (random weights; ~30 s on 2 CPU cores)."""
    from neuroradix.models.release import make_test_release

    return make_test_release(tmp_path_factory.mktemp("release") / "tiny")


@pytest.fixture
def mllp_peer() -> Iterator[MllpPeer]:
    """A real MLLP listener on loopback (tests/peers.py); ``.mode`` picks its answer."""
    with mllp_listener() as peer:
        yield peer


@pytest.fixture
def http_peer() -> Iterator[HttpPeer]:
    """A real HTTP receiver on loopback (tests/peers.py); ``.answers`` / ``.default`` pick its status."""
    with http_receiver() as peer:
        yield peer


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    return free_closed_port()
