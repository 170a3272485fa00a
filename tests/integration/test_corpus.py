"""The bad-input corpus through a real Orthanc and the node: every kind of input ends in its stated state.

The corpus (:mod:`tests.corpus.generate`) is written to a temporary folder, every study is stored
in Orthanc (its REST API, the files' bytes as written: compressed syntaxes, big endian, deflate and
broken pixel data reach the PACS exactly so) before any is waited for, then each case's job is
checked: its state, its reason (or, for valid input, its warnings and stored results), one attempt
only (no retry loop on bad input). A good study sent after the corpus must succeed and ``/readyz``
must answer 200: bad input leaves the node healthy.
"""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path

import pydicom
import pytest

from neuroradix import MANUFACTURER
from tests.corpus.generate import CASES, FAILED, GOOD, NOT_HANDED_OFF, SKIPPED, SUCCEEDED, Case, write_case
from tests.harness import TERMINAL
from tests.support import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_SECONDS = 600.0  # for the whole corpus (51 studies, one worker; about 4-5 min on a loaded 2-core machine)
REFERENCE = "reference"  # the good study, sent first: what valid input must measure
_NOT_HANDED_OFF = {c.name for c in CASES if c.state == NOT_HANDED_OFF}
LUNG_MEASURES = ("Right lung volume", "Left lung volume", "Right lung mean lung density", "Left lung mean lung density")


def _send(node, paths: list[Path]) -> str:
    """Store the files in Orthanc as written; return the study's UID."""
    for path in paths:
        node.orthanc.request("POST", "/instances", path.read_bytes())
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def _jobs_by_study(node) -> dict[str, dict]:
    jobs = node.api("GET", "/v1/jobs?limit=1000")
    latest: dict[str, dict] = {}
    for job in jobs:  # newest first
        latest.setdefault(job["study_uid"], job)
    return latest


def _wait_all(node, study_uids: dict[str, str], timeout: float) -> dict[str, dict]:
    """Wait until every study's latest job is in a terminal state (or ``timeout``); return them by case name."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = _jobs_by_study(node)
        done = {name: jobs[uid] for name, uid in study_uids.items() if uid in jobs and jobs[uid]["state"] in TERMINAL}
        if len(done) == len(study_uids) or time.monotonic() > deadline:
            return done  # a case left out fails its own test, naming its last state
        time.sleep(0.5)


@pytest.fixture(scope="module")
def corpus(node, tmp_path_factory):
    """Every case sent, then every job waited for: ``{case name: (study UID, job or None)}``."""
    require_tool("dcmcjpeg")
    root = tmp_path_factory.mktemp("corpus")
    seed = f"corpus-{time.time_ns()}"  # fresh UIDs: the session's node may have seen an earlier run
    study_uids = {REFERENCE: _send(node, write_case(GOOD, root / REFERENCE, seed + "-reference"))}
    study_uids.update({case.name: _send(node, write_case(case, root / case.name, seed)) for case in CASES})
    handed_off = {name: uid for name, uid in study_uids.items() if name not in _NOT_HANDED_OFF}
    done = _wait_all(node, handed_off, WAIT_SECONDS)
    # The plugin has seen every study by now (each one stable, handed off in arrival order).
    latest = _jobs_by_study(node)
    return {name: (uid, done.get(name, latest.get(uid))) for name, uid in study_uids.items()}


def _lung_measures(job: dict) -> dict[str, float]:
    measurements = job["details"]["results"]["lung-hu"]["measurements"]
    return {m["name"]: float(m["value"]) for m in measurements if m["name"] in LUNG_MEASURES}


def _outputs(node, study_uid: str) -> list:
    return [s for s in node.series(study_uid) if s.manufacturer == MANUFACTURER]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_case_ends_in_its_stated_state(node, corpus, case: Case):
    study_uid, job = corpus[case.name]
    if case.state == NOT_HANDED_OFF:
        assert job is None, f"the plugin handed off a study of the node's own results: {job}"
        node.api("POST", "/v1/jobs", {"study_uid": study_uid})  # an operator asks anyway
        job = node.wait_job(study_uid, timeout=60)
        assert job["state"] == SKIPPED and case.reason in (job["error_message"] or ""), job
        return
    assert job is not None and job["state"] in TERMINAL, f"{case.kind}: not finished in {WAIT_SECONDS:.0f} s: {job}"
    assert job["state"] == case.state, f"{case.kind}: {job['state']} ({job.get('error_message')})"
    assert job["attempts"] == 1, f"{case.kind}: {job['attempts']} attempts ({job.get('error_message')})"
    if case.state == SUCCEEDED:
        warnings = job["details"].get("warnings", [])
        assert not case.reason or any(case.reason in w for w in warnings), warnings
        assert job["output_uids"] and len(_outputs(node, study_uid)) == len(
            {r["series_instance_uid"] for r in job["output_uids"]}
        )
        # Same anatomy, same numbers: HU, orientation and left/right survived the unusual encoding
        # (a tilt shortens the slice step by cos 15 degrees; lossy 8-bit JPEG moves HU by a few units).
        reference = corpus[REFERENCE][1]
        assert reference is not None and reference["state"] == SUCCEEDED, reference
        expected, measured = _lung_measures(reference), _lung_measures(job)
        assert set(measured) == set(LUNG_MEASURES), measured
        for name, value in measured.items():
            tolerance = 0.05 * expected[name] if "volume" in name else 15.0
            assert abs(value - expected[name]) <= abs(tolerance), f"{case.kind}: {name} {value} vs {expected[name]}"
        return
    reason = job["error_message"] or ""
    assert case.reason in reason, f"{case.kind}: reason {reason!r} lacks {case.reason!r}"
    assert not reason.startswith("internal error"), reason
    if case.state == FAILED:
        assert job["error_class"] != "Exception" and "Error" in job["error_class"], job
    assert _outputs(node, study_uid) == [], "nothing is stored for bad input"


def test_node_stays_healthy_and_the_next_good_study_succeeds(node, corpus, tmp_path):
    assert {c.state for c in CASES} >= {SUCCEEDED, FAILED, SKIPPED}
    study_uid = _send(node, write_case(GOOD, tmp_path / GOOD.name, f"corpus-good-{time.time_ns()}"))
    job = node.wait_job(study_uid, timeout=120)
    assert job["state"] == SUCCEEDED and job["attempts"] == 1, job
    assert len(_outputs(node, study_uid)) == len({r["series_instance_uid"] for r in job["output_uids"]}) > 0
    try:
        ready = node.api("GET", "/readyz")
    except urllib.error.HTTPError as exc:  # 503 with the reason
        pytest.fail(f"/readyz answered {exc.code}: {exc.read()!r}")
    assert ready
