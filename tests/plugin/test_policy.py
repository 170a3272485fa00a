"""The plugin's access policy: each Orthanc account within its scope, forged results refused.

Pure-function tests plus the glue against a fake ``orthanc`` module; the same rules against a
real Orthanc are in tests/integration/test_security.py.
"""

from __future__ import annotations

import base64
import importlib
import json
import sys
import threading
import types

import pytest
from neuroradix_plugin.policy import (
    PEOPLE,
    REFUSED_NOT_AUTHORIZED,
    SIDECAR,
    VIEWER,
    AccessConfig,
    RecentlyDeleted,
    basic_auth_user,
    http_allowed,
    instance_allowed,
)

CONFIG = AccessConfig(sidecar_user="sc", viewer_user="vw", own_manufacturer="Neuro Radix")
SERIES_ID = "0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d"
OWN = {"Manufacturer": "Neuro Radix", "SOPInstanceUID": "2.25.1"}
FOREIGN = {"Manufacturer": "Scanner Co", "SOPInstanceUID": "1.2.3"}
OWN_SERIES_UID = "2.25.77"  # a stored series of the node's
IN_OWN_SERIES = {"Manufacturer": "Scanner Co", "SOPInstanceUID": "1.2.4", "SeriesInstanceUID": OWN_SERIES_UID}


def _basic(user: str, password: str = "pw") -> dict:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# Route classes: (method, uri) -> the roles that may use it.
ROUTES = {
    ("GET", "/dicom-web/studies"): {PEOPLE, SIDECAR, VIEWER},
    ("GET", "/dicom-web/studies/1.2.3/series/4.5/metadata"): {PEOPLE, SIDECAR, VIEWER},
    ("POST", "/dicom-web/studies"): {PEOPLE, SIDECAR},
    ("POST", "/dicom-web/studies/1.2.3"): {PEOPLE, SIDECAR},
    ("POST", "/tools/lookup"): {PEOPLE, SIDECAR},
    ("DELETE", f"/series/{SERIES_ID}"): {PEOPLE, SIDECAR},  # an own series: see below
    ("GET", "/patients"): {PEOPLE},
    ("GET", "/system"): {PEOPLE, SIDECAR},  # the version check at start (CVE minimum) and label support
    ("PUT", f"/studies/{SERIES_ID}/labels/ai-urgent"): {PEOPLE, SIDECAR},
    ("DELETE", f"/studies/{SERIES_ID}/labels/ai-pending"): {PEOPLE, SIDECAR},
    ("GET", f"/studies/{SERIES_ID}/labels"): {PEOPLE, SIDECAR},
    ("PUT", f"/studies/{SERIES_ID}/labels/teaching-file"): {PEOPLE},  # not a triage label
    ("DELETE", f"/studies/{SERIES_ID}/labels/ai-urgent-x"): {PEOPLE},
    ("PUT", f"/studies/{SERIES_ID}/metadata/NeuroRadixTriage"): {PEOPLE, SIDECAR},
    ("PUT", f"/studies/{SERIES_ID}/metadata/Other"): {PEOPLE},
    ("PUT", "/studies/not-an-id/labels/ai-urgent"): {PEOPLE},
    ("POST", "/instances"): {PEOPLE},
    ("DELETE", f"/studies/{SERIES_ID}"): {PEOPLE},
    ("POST", "/tools/shutdown"): {PEOPLE},
    ("PUT", "/modalities/x"): {PEOPLE},
    ("POST", "/dicom-web/servers/x/stow"): {PEOPLE},
    ("GET", "/dicom-web/../patients"): {PEOPLE},
}
USERS = {PEOPLE: "alice", SIDECAR: "sc", VIEWER: "vw"}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("role", sorted(USERS))
def test_each_account_against_each_route_class(role, route):
    method, uri = route
    allowed = http_allowed(CONFIG, USERS[role], method, uri, series_manufacturer=lambda _id: "Neuro Radix")
    assert allowed == (role in ROUTES[route])


def test_sidecar_deletes_only_the_nodes_own_series():
    assert http_allowed(CONFIG, "sc", "DELETE", f"/series/{SERIES_ID}", lambda _id: "Neuro Radix")
    assert not http_allowed(CONFIG, "sc", "DELETE", f"/series/{SERIES_ID}", lambda _id: "Scanner Co")
    assert not http_allowed(CONFIG, "sc", "DELETE", "/series/not-an-id", lambda _id: "Neuro Radix")

    def missing(_id: str) -> str:
        raise KeyError(_id)

    assert not http_allowed(CONFIG, "sc", "DELETE", f"/series/{SERIES_ID}", missing)
    assert not http_allowed(CONFIG, "sc", "DELETE", f"/series/{SERIES_ID}", None)


def test_basic_auth_user():
    assert basic_auth_user(_basic("sc")) == "sc"
    assert basic_auth_user({"Authorization": "Basic " + base64.b64encode(b"vw:a:b").decode()}) == "vw"
    assert basic_auth_user({"authorization": "Bearer x"}) == ""
    assert basic_auth_user({"authorization": "Basic !!!"}) == ""
    assert basic_auth_user({}) == ""


def test_forged_output_kept_only_from_the_sidecar_over_http():
    assert instance_allowed(OWN, CONFIG, over_dicom=False, http_user="sc", http_uri="/dicom-web/studies")
    assert not instance_allowed(OWN, CONFIG, over_dicom=False, http_user="alice", http_uri="/dicom-web/studies")
    assert not instance_allowed(OWN, CONFIG, over_dicom=False, http_user="vw", http_uri="/instances")
    # An administrator may restore the node's objects through Orthanc's own upload, not STOW-RS.
    assert instance_allowed(OWN, CONFIG, over_dicom=False, http_user="alice", http_uri="/instances")
    assert not instance_allowed(OWN, CONFIG, over_dicom=False, http_user=None)  # Lua, jobs
    assert not instance_allowed(OWN, CONFIG, over_dicom=True, http_user=None)
    assert not instance_allowed({"Manufacturer": " Neuro Radix "}, CONFIG, over_dicom=True, http_user=None)
    for over_dicom, user in ((True, None), (False, "alice"), (False, "sc")):
        assert instance_allowed(FOREIGN, CONFIG, over_dicom=over_dicom, http_user=user)


def test_config_refuses_missing_or_shared_accounts():
    with pytest.raises(ValueError, match="SidecarUser"):
        AccessConfig.from_section({"ViewerUser": "vw"})
    with pytest.raises(ValueError, match="different"):
        AccessConfig("same", "same")
    assert AccessConfig.from_section({"SidecarUser": "sc", "ViewerUser": "vw"}).role("anyone") == PEOPLE


@pytest.fixture()
def glue(monkeypatch):
    """The real glue module loaded against a fake ``orthanc``."""
    fake = types.ModuleType("orthanc")
    fake.ChangeType = types.SimpleNamespace(ORTHANC_STARTED=0, ORTHANC_STOPPED=1, STABLE_STUDY=2)
    fake.HttpMethod = types.SimpleNamespace(GET=1, POST=2, PUT=3, DELETE=4)
    fake.InstanceOrigin = types.SimpleNamespace(DICOM_PROTOCOL=2, REST_API=3, PLUGIN=4, LUA=5, UNKNOWN=1)
    fake.ReceivedInstanceAction = types.SimpleNamespace(KEEP_AS_IS=1, MODIFY=2, DISCARD=3)
    fake.GetConfiguration = lambda: json.dumps(
        {
            "NeuroRadix": {
                "SidecarUrl": "http://127.0.0.1:9",
                "SidecarUser": "sc",
                "ViewerUser": "vw",
                "OwnManufacturer": "Neuro Radix",
            }
        }
    )
    fake.logged = []
    fake.LogInfo = fake.LogWarning = fake.LogError = fake.logged.append
    fake.RestApiGet = lambda uri: json.dumps({"MainDicomTags": {"Manufacturer": "Neuro Radix"}})
    fake.lookups = []

    def rest_api_post(uri: str, body: str) -> str:
        fake.lookups.append((uri, body))
        return json.dumps([{"Type": "Series", "ID": SERIES_ID}] if body == OWN_SERIES_UID else [])

    fake.RestApiPost = rest_api_post

    class Instance:
        def __init__(self, tags: dict) -> None:
            self.tags = tags

        def GetInstanceSimplifiedJson(self) -> str:  # noqa: N802 - Orthanc's name
            return json.dumps(self.tags)

    fake.CreateDicomInstance = lambda data: Instance(json.loads(data))
    fake.Instance = Instance
    for name in (
        "RegisterOnChangeCallback",
        "RegisterIncomingHttpRequestFilter",
        "RegisterReceivedInstanceCallback",
        "RegisterIncomingCStoreInstanceFilter",
    ):
        setattr(fake, name, lambda callback: None)
    monkeypatch.setitem(sys.modules, "orthanc", fake)
    monkeypatch.setenv("NEURORADIX_SIDECAR_TOKEN", "t0ken-t0ken-t0ken")
    sys.modules.pop("neuroradix_plugin.glue", None)
    module = importlib.import_module("neuroradix_plugin.glue")
    yield module, fake
    sys.modules.pop("neuroradix_plugin.glue", None)


def test_glue_filter_gives_each_account_its_scope(glue):
    module, fake = glue
    assert module.http_filter("/dicom-web/studies", method=1, ip="127.0.0.1", headers=_basic("vw"), get={})
    assert not module.http_filter("/patients", method=1, ip="127.0.0.1", headers=_basic("vw"), get={})
    assert module.http_filter("/patients", method=1, ip="127.0.0.1", headers=_basic("alice"), get={})
    assert module.http_filter(f"/series/{SERIES_ID}", method=4, ip="127.0.0.1", headers=_basic("sc"))
    refused = [m for m in fake.logged if "refused" in m]
    assert refused and all("1.2.3" not in m for m in refused)


def test_glue_discards_a_forged_result_stored_by_people_and_keeps_the_sidecars(glue):
    module, fake = glue
    keep, discard = fake.ReceivedInstanceAction.KEEP_AS_IS, fake.ReceivedInstanceAction.DISCARD
    rest = fake.InstanceOrigin.REST_API
    forged = json.dumps(OWN).encode()
    module.http_filter("/dicom-web/studies", method=2, ip="127.0.0.1", headers=_basic("alice"))
    assert module.on_received_instance(forged, rest)[0] == discard
    module.http_filter("/dicom-web/studies/1.2.3", method=2, ip="127.0.0.1", headers=_basic("alice"))
    assert module.on_received_instance(forged, fake.InstanceOrigin.PLUGIN)[0] == discard
    assert module.on_received_instance(json.dumps(FOREIGN).encode(), rest)[0] == keep
    module.http_filter("/dicom-web/studies", method=2, ip="127.0.0.1", headers=_basic("sc"))
    assert module.on_received_instance(forged, rest)[0] == keep
    assert module.on_received_instance(forged, fake.InstanceOrigin.DICOM_PROTOCOL)[0] == discard

    # The user is remembered per thread: another HTTP thread serving people is not the sidecar.
    seen = []

    def other_thread() -> None:
        module.http_filter("/dicom-web/studies", method=2, ip="127.0.0.1", headers=_basic("vw"))
        seen.append(module.on_received_instance(forged, rest)[0])

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen == [discard] and module.on_received_instance(forged, rest)[0] == keep


def test_glue_cstore_filter_refuses_the_nodes_output(glue):
    module, fake = glue
    assert module.on_cstore(fake.Instance(OWN)) == REFUSED_NOT_AUTHORIZED
    assert module.on_cstore(fake.Instance(FOREIGN)) == 0


def test_foreign_instance_in_the_nodes_series_is_refused_like_a_forgery():
    def own_series(uid: str) -> bool:
        return uid == OWN_SERIES_UID

    elsewhere = {**IN_OWN_SERIES, "SeriesInstanceUID": "1.2.5"}
    assert not instance_allowed(IN_OWN_SERIES, CONFIG, True, None, series_is_own=own_series)
    assert not instance_allowed(IN_OWN_SERIES, CONFIG, False, "alice", "/dicom-web/studies", own_series)
    assert instance_allowed(IN_OWN_SERIES, CONFIG, False, "sc", "/dicom-web/studies", own_series)
    assert instance_allowed(IN_OWN_SERIES, CONFIG, False, "alice", "/instances", own_series)  # a restore
    assert instance_allowed(elsewhere, CONFIG, True, None, series_is_own=own_series)

    def broken(uid: str) -> bool:
        raise OSError("lookup failed")

    assert not instance_allowed(elsewhere, CONFIG, True, None, series_is_own=broken)  # fail closed


def test_own_manufacturer_ignores_case_and_spacing():
    for value in ("Neuro Radix", "NEURO RADIX", " neuro  radix ", "Neuro\tRadix"):
        assert not instance_allowed({"Manufacturer": value}, CONFIG, over_dicom=True, http_user=None), value
    assert instance_allowed({"Manufacturer": "Neuro Radix Ltd"}, CONFIG, over_dicom=True, http_user=None)
    assert http_allowed(CONFIG, "sc", "DELETE", f"/series/{SERIES_ID}", lambda _id: "NEURO RADIX")


def test_glue_refuses_a_foreign_instance_in_the_nodes_series(glue):
    module, fake = glue
    assert module.on_cstore(fake.Instance(IN_OWN_SERIES)) == REFUSED_NOT_AUTHORIZED
    assert fake.lookups == [("/tools/lookup", OWN_SERIES_UID)]
    assert module.on_cstore(fake.Instance({**IN_OWN_SERIES, "SeriesInstanceUID": "1.2.5"})) == 0
    keep, discard = fake.ReceivedInstanceAction.KEEP_AS_IS, fake.ReceivedInstanceAction.DISCARD
    module.http_filter("/dicom-web/studies", method=2, ip="127.0.0.1", headers=_basic("alice"))
    assert module.on_received_instance(json.dumps(IN_OWN_SERIES).encode(), fake.InstanceOrigin.REST_API)[0] == discard
    module.http_filter("/dicom-web/studies", method=2, ip="127.0.0.1", headers=_basic("sc"))
    assert module.on_received_instance(json.dumps(IN_OWN_SERIES).encode(), fake.InstanceOrigin.REST_API)[0] == keep
    # C-STORE: the filter looked already; the received-instance callback does not look again.
    fake.lookups.clear()
    assert (
        module.on_received_instance(json.dumps(IN_OWN_SERIES).encode(), fake.InstanceOrigin.DICOM_PROTOCOL)[0] == keep
    )
    assert fake.lookups == []


def test_glue_prefers_the_plugin_token(glue, monkeypatch):
    module, _fake = glue
    assert module.HANDOFF.config.sidecar_token == "t0ken-t0ken-t0ken"  # an older deployment: the admin variable
    monkeypatch.setenv("NEURORADIX_SIDECAR_PLUGIN_TOKEN", "plugin-only-token")
    assert module._config().sidecar_token == "plugin-only-token"


def test_recently_deleted_series_are_remembered_for_a_while():
    now = [0.0]
    recent = RecentlyDeleted(ttl=10, max_entries=2, clock=lambda: now[0])
    recent.add("1.1")
    recent.add("1.2")
    assert "1.1" in recent and "1.3" not in recent
    recent.add("1.3")  # the oldest is forgotten beyond max_entries
    assert "1.1" not in recent and "1.2" in recent and "1.3" in recent
    now[0] = 11
    assert "1.2" not in recent and "1.3" not in recent
    with pytest.raises(ValueError):
        RecentlyDeleted(ttl=0)


def test_glue_keeps_foreign_objects_out_of_a_series_a_rerun_deleted(glue, monkeypatch):
    module, fake = glue
    monkeypatch.setattr(
        fake,
        "RestApiGet",
        lambda uri: json.dumps({"MainDicomTags": {"Manufacturer": "Neuro Radix", "SeriesInstanceUID": "2.25.99"}}),
    )
    gone = {"Manufacturer": "Scanner Co", "SOPInstanceUID": "1.2.6", "SeriesInstanceUID": "2.25.99"}
    assert module.on_cstore(fake.Instance(gone)) == 0  # not stored, never deleted: not the node's
    assert module.http_filter(f"/series/{SERIES_ID}", method=4, ip="127.0.0.1", headers=_basic("sc"))
    assert module.on_cstore(fake.Instance(gone)) == REFUSED_NOT_AUTHORIZED  # the rerun's gap is closed
    module.http_filter("/dicom-web/studies", method=2, ip="127.0.0.1", headers=_basic("sc"))
    assert module.on_received_instance(json.dumps(gone).encode(), fake.InstanceOrigin.REST_API)[0] == (
        fake.ReceivedInstanceAction.KEEP_AS_IS
    )  # the sidecar stores the series again
