"""Plugin logic with a fake ``orthanc`` module: eligibility, no loops on own output, retry while down."""

from __future__ import annotations

import importlib
import json
import sys
import types

import pytest
from neuroradix_plugin.handoff import Handoff, HandoffConfig

OWN = "Neuro Radix"


class FakeOrthancRest:
    """Orthanc's REST answers for /studies/{id} and /studies/{id}/series."""

    def __init__(self) -> None:
        self.studies: dict[str, dict] = {}

    def add_series(
        self, study_id: str, study_uid: str, series_uid: str, modality: str, n: int, manufacturer: str = "Scanner"
    ):
        study = self.studies.setdefault(study_id, {"uid": study_uid, "series": []})
        study["series"].append(
            {
                "ID": series_uid[-6:],
                "MainDicomTags": {"SeriesInstanceUID": series_uid, "Modality": modality, "Manufacturer": manufacturer},
                "Instances": [f"i{k}" for k in range(n)],
            }
        )

    def get(self, uri: str) -> str:
        parts = uri.strip("/").split("/")
        study = self.studies[parts[1]]
        if len(parts) == 2:
            return json.dumps({"MainDicomTags": {"StudyInstanceUID": study["uid"]}})
        return json.dumps(study["series"])


class FakeSidecar:
    def __init__(self, failures: int = 0, status: int = 202) -> None:
        self.failures, self.status, self.bodies, self.calls = failures, status, [], 0

    def post(self, url, body, headers, timeout):
        self.calls += 1
        assert url.endswith("/v1/jobs") and headers["Authorization"] == "Bearer t0ken-t0ken-t0ken"
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("sidecar down")
        self.bodies.append(json.loads(body))
        return self.status


def make(rest, sidecar, sleeps=None):
    config = HandoffConfig(sidecar_url="http://127.0.0.1:9/", sidecar_token="t0ken-t0ken-t0ken", own_manufacturer=OWN)
    return Handoff(config, rest.get, post=sidecar.post, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_ct_study_is_posted_once_and_own_results_do_not_loop():
    rest, sidecar = FakeOrthancRest(), FakeSidecar()
    rest.add_series("s1", "1.2.3", "1.2.3.1", "CT", 120)
    handoff = make(rest, sidecar)
    handoff.submit("s1")
    handoff.drain()
    assert len(sidecar.bodies) == 1
    body = sidecar.bodies[0]
    assert {k: body[k] for k in ("study_uid", "trigger", "rerun")} == {
        "study_uid": "1.2.3",
        "trigger": "stable-study",
        "rerun": False,
    }
    assert len(body["source_fingerprint"]) == 16
    # the node stores SEG/SR/PM into the study -> STABLE_STUDY fires again
    rest.add_series("s1", "1.2.3", "2.25.1", "SEG", 1, manufacturer=OWN)
    rest.add_series("s1", "1.2.3", "2.25.2", "SR", 1, manufacturer=OWN)
    handoff.submit("s1")
    handoff.drain()
    assert len(sidecar.bodies) == 1 and handoff.skipped == 1


def test_more_slices_after_handoff_is_posted_as_rerun():
    rest, sidecar = FakeOrthancRest(), FakeSidecar()
    rest.add_series("s1", "1.2.3", "1.2.3.1", "CT", 60)
    handoff = make(rest, sidecar)
    handoff.process("s1")
    rest.studies["s1"]["series"][0]["Instances"] += ["late1", "late2"]
    decision = handoff.process("s1")
    assert decision.post and decision.rerun and sidecar.bodies[-1]["rerun"] is True


def test_study_of_only_own_series_is_not_posted():
    rest, sidecar = FakeOrthancRest(), FakeSidecar()
    rest.add_series("s1", "1.2.3", "2.25.1", "SEG", 1, manufacturer=OWN)
    decision = make(rest, sidecar).process("s1")
    assert not decision.post and "own output" in decision.reason and sidecar.calls == 0


def test_non_ct_study_goes_to_the_sidecar_which_records_the_skip():
    rest, sidecar = FakeOrthancRest(), FakeSidecar()
    rest.add_series("s1", "1.2.9", "1.2.9.1", "MR", 30)
    assert make(rest, sidecar).process("s1").post


def test_modality_filter_when_configured():
    rest, sidecar = FakeOrthancRest(), FakeSidecar()
    rest.add_series("s1", "1.2.9", "1.2.9.1", "MR", 30)
    config = HandoffConfig("http://x:1", "t0ken-t0ken-t0ken", modalities=("CT",))
    decision = Handoff(config, rest.get, post=sidecar.post).process("s1")
    assert not decision.post and "no CT series" in decision.reason


def test_retries_with_exponential_backoff_while_sidecar_is_down():
    rest, sidecar, sleeps = FakeOrthancRest(), FakeSidecar(failures=5), []
    rest.add_series("s1", "1.2.3", "1.2.3.1", "CT", 100)
    make(rest, sidecar, sleeps).process("s1")
    assert sidecar.calls == 6 and len(sidecar.bodies) == 1
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_client_error_is_not_retried():
    rest, sidecar, sleeps = FakeOrthancRest(), FakeSidecar(status=401), []
    rest.add_series("s1", "1.2.3", "1.2.3.1", "CT", 100)
    make(rest, sidecar, sleeps).process("s1")
    assert sidecar.calls == 1 and sleeps == []


def test_config_refuses_missing_token():
    with pytest.raises(ValueError, match="sidecar_token"):
        HandoffConfig("http://x:1", "")


def test_glue_registers_callback_and_only_queues_in_it(monkeypatch):
    """Import the real glue module against a fake ``orthanc``: the callback must not call REST."""
    calls = {"rest": 0}
    fake = types.ModuleType("orthanc")

    class ChangeType:
        ORTHANC_STARTED, ORTHANC_STOPPED, STABLE_STUDY, NEW_INSTANCE = 0, 1, 2, 3

    fake.ChangeType = ChangeType
    fake.HttpMethod = types.SimpleNamespace(GET=1, POST=2, PUT=3, DELETE=4)
    fake.InstanceOrigin = types.SimpleNamespace(DICOM_PROTOCOL=2, REST_API=3, PLUGIN=4, LUA=5, UNKNOWN=1)
    fake.ReceivedInstanceAction = types.SimpleNamespace(KEEP_AS_IS=1, MODIFY=2, DISCARD=3)
    fake.GetConfiguration = lambda: json.dumps(
        {"NeuroRadix": {"SidecarUrl": "http://127.0.0.1:9", "SidecarUser": "sc", "ViewerUser": "vw"}}
    )
    filters = []
    fake.RegisterIncomingHttpRequestFilter = filters.append
    fake.RegisterReceivedInstanceCallback = filters.append
    fake.RegisterIncomingCStoreInstanceFilter = filters.append
    fake.LogInfo = fake.LogWarning = fake.LogError = lambda message: None

    def rest_get(uri):
        calls["rest"] += 1
        return "{}"

    fake.RestApiGet = rest_get
    registered = []
    fake.RegisterOnChangeCallback = registered.append
    monkeypatch.setitem(sys.modules, "orthanc", fake)
    monkeypatch.setenv("NEURORADIX_SIDECAR_TOKEN", "t0ken-t0ken-t0ken")
    sys.modules.pop("neuroradix_plugin.glue", None)
    glue = importlib.import_module("neuroradix_plugin.glue")
    assert registered == [glue.on_change] and glue.HANDOFF is not None
    glue.on_change(ChangeType.STABLE_STUDY, 0, "study-id")
    glue.on_change(ChangeType.NEW_INSTANCE, 0, "instance-id")
    assert calls["rest"] == 0 and glue.HANDOFF._queue.qsize() == 1
    assert filters == [glue.http_filter, glue.on_received_instance, glue.on_cstore]


def test_plugin_and_sidecar_compute_the_same_fingerprint():
    """The plugin (Orthanc REST) and the worker (QIDO) must agree, or every study would rerun."""
    import pydicom
    from neuroradix_plugin.handoff import source_fingerprint, source_items

    from neuroradix.pacs.series import source_fingerprint as sidecar_fingerprint

    rest = FakeOrthancRest()
    rest.add_series("s1", "1.2.3", "1.2.3.1", "CT", 120)
    rest.add_series("s1", "1.2.3", "1.2.3.2", "CT", 3)
    rest.add_series("s1", "1.2.3", "2.25.9", "SEG", 1, manufacturer=OWN)
    qido = []
    for s in rest.studies["s1"]["series"]:
        ds = pydicom.Dataset()
        ds.SeriesInstanceUID = s["MainDicomTags"]["SeriesInstanceUID"]
        ds.Manufacturer = s["MainDicomTags"]["Manufacturer"]
        ds.NumberOfSeriesRelatedInstances = len(s["Instances"])
        qido.append(ds)
    plugin_side = source_fingerprint(source_items(rest.studies["s1"]["series"], OWN))
    assert plugin_side == sidecar_fingerprint(qido, OWN)
    qido[0].NumberOfSeriesRelatedInstances = 121  # one more slice: a different study
    assert plugin_side != sidecar_fingerprint(qido, OWN)
