"""``/readyz`` names Orthanc's and its plugins' versions and is red on an Orthanc older than 1.12.11."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from neuroradix.api.app import create_app
from neuroradix.errors import TransientError
from neuroradix.jobs.ledger import Ledger
from neuroradix.pacs.orthanc_info import OrthancInfo
from tests.api.test_auth import CountingPacs, _settings

PLUGINS = {"dicom-web": "1.24", "gdcm": "1.8", "python": "7.1"}


def _readyz(tmp_path, info, **extra):
    settings = _settings(tmp_path, **extra)
    app = create_app(
        settings, Ledger(settings.resolved_ledger_url), CountingPacs(), run_reconciler=False, orthanc_info=info
    )
    with TestClient(app) as client:
        return client.get("/readyz")


def test_readyz_names_the_versions_of_a_current_orthanc(tmp_path):
    answer = _readyz(tmp_path, lambda: OrthancInfo("1.13.0", True, None, PLUGINS))
    assert answer.status_code == 200
    assert answer.json()["checks"]["orthanc"] == "ok"
    assert answer.json()["orthanc"] == {
        "version": "1.13.0",
        "has_labels": True,
        "database_backend": None,
        "plugins": PLUGINS,
    }


@pytest.mark.parametrize("version", ["1.10.1", "1.12.10"])
def test_readyz_is_red_on_an_old_orthanc_and_says_why(tmp_path, version):
    answer = _readyz(tmp_path, lambda: OrthancInfo(version, False, None, {"python": "4.0"}))
    assert answer.status_code == 503
    check = answer.json()["checks"]["orthanc"]
    assert f"Orthanc {version} is older than 1.12.11" in check
    assert "CVE-2026-5437" in check and "NEURORADIX_ALLOW_OLD_ORTHANC=1" in check
    assert answer.json()["orthanc"]["version"] == version


def test_the_override_keeps_an_old_orthanc_ready(tmp_path):
    answer = _readyz(tmp_path, lambda: OrthancInfo("1.10.1"), allow_old_orthanc=True)
    assert answer.status_code == 200 and answer.json()["checks"]["orthanc"] == "ok"


def test_an_unreachable_orthanc_is_not_ready(tmp_path):
    def unreachable() -> OrthancInfo:
        raise TransientError("Orthanc system: ConnectionError")

    answer = _readyz(tmp_path, unreachable)
    assert answer.status_code == 503 and answer.json()["checks"]["orthanc"].startswith("error: Orthanc system")
    assert "orthanc" not in answer.json()
