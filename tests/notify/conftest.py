"""Fixtures of the notification tests: a sample notification and the real loopback peers.

The peers (``mllp_peer``, ``http_peer``, ``closed_port``) are fixtures of the root conftest, made
from :mod:`tests.peers`; the triage tests and ``scripts/bench_triage.py`` use them too.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from neuroradix.notify.message import Evidence, Links, Notification, PatientInfo


def make_notification(**overrides: Any) -> Notification:
    """A priority decision with one measurement and one finding (fields overridable)."""
    base = Notification(
        delivery_id="nrx-0123456789abcdef0123456789abcdef",
        kind="decision",
        study_uid="1.2.826.0.1.3680043.8.498.11223344556677",
        accession_number="ACC-2026-0042",
        patient=PatientInfo(id="PAT-7781", name="Doe^Jane^Q^Dr^III", birth_date="19580214", sex="F"),
        level="priority",
        reasons=("severe emphysema",),
        evidence=(
            Evidence("severe emphysema", "Total LAA-950", 17.25, "%", 15.0, ">=", None, "measurement"),
            Evidence("effusion watch", "Pleural effusion", 0.42, "", 0.8, ">=", "deep", "finding"),
        ),
        policy_version="site-2026-12-01",
        policy_sha256="3f" * 32,
        decided_at="2026-12-07T22:40:05+00:00",
        created_at="2026-12-07T22:40:06+00:00",
        links=Links(
            worklist_url="http://127.0.0.1:8042/worklist",
            ohif_url="http://127.0.0.1:8042/ohif/viewer?StudyInstanceUIDs=1.2.826.0.1.3680043.8.498.11223344556677",
            results_url="http://127.0.0.1:8000/v1/results/1.2.826.0.1.3680043.8.498.11223344556677.zip",
        ),
    )
    return replace(base, **overrides)


@pytest.fixture
def notification() -> Notification:
    return make_notification()
