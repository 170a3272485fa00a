"""Every route Orthanc 1.13 serves, and which account may call it (plugin/policy.py).

``data/orthanc-1.13-routes.json`` lists Orthanc's core REST routes (from ``Orthanc --openapi`` and
the routes it serves undocumented; regenerate with ``python -m neuroradix.deploy.orthanc_dist
routes --out tests/deploy/data/orthanc-1.13-routes.json``). People (administrators) may call
every route; the sidecar's and the viewer's accounts only those in ``EXPECTED``; any route not
named there, including one a newer Orthanc adds, is people-only. With the installed Orthanc at
hand the test also runs over the routes it serves today.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from neuroradix_plugin.policy import AccessConfig, http_allowed

from neuroradix.deploy.orthanc_dist import OrthancDist, rest_routes

ROUTES_FILE = Path(__file__).parent / "data" / "orthanc-1.13-routes.json"
CONFIG = AccessConfig(sidecar_user="sc", viewer_user="vw", own_manufacturer="Neuro Radix")
ORTHANC_ID = "0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d"
# Values put into a route's {placeholders}: an Orthanc id, the node's own label and metadata.
PLACEHOLDERS = {"id": ORTHANC_ID, "label": "ai-urgent", "name": "NeuroRadixTriage"}

SIDECAR, VIEWER = "sidecar", "viewer"
EXPECTED = {
    ("GET", "/system"): {SIDECAR},
    ("GET", "/plugins"): {SIDECAR},
    ("GET", "/plugins/{id}"): {SIDECAR},
    ("POST", "/tools/lookup"): {SIDECAR},
    ("POST", "/tools/find"): {SIDECAR, VIEWER},
    ("GET", "/tools/labels"): {SIDECAR, VIEWER},
    ("GET", "/studies/{id}/labels"): {SIDECAR},
    ("PUT", "/studies/{id}/labels/{label}"): {SIDECAR},
    ("DELETE", "/studies/{id}/labels/{label}"): {SIDECAR},
    ("PUT", "/studies/{id}/metadata/{name}"): {SIDECAR},
    ("DELETE", "/series/{id}"): {SIDECAR},  # its own series only (Manufacturer checked)
}


def _uri(template: str) -> str:
    if template == "/plugins/{id}":
        return "/plugins/dicom-web"  # a plugin's id, not a resource's
    return re.sub(r"\{(\w+)\}", lambda m: PLACEHOLDERS.get(m.group(1), "x"), template)


def _classes(method: str, template: str) -> set[str]:
    uri = _uri(template)
    own = lambda _series_id: "Neuro Radix"  # noqa: E731 - the sidecar's own series
    return {
        role
        for role, user in ((SIDECAR, "sc"), (VIEWER, "vw"))
        if http_allowed(CONFIG, user, method, uri, series_manufacturer=own)
    }


def _committed_routes() -> list[tuple[str, str]]:
    data = json.loads(ROUTES_FILE.read_text(encoding="utf-8"))
    return [(method, path) for method, path in data["routes"]]


def test_the_route_list_is_orthanc_1_13s():
    routes = set(_committed_routes())
    assert len(routes) > 250
    # routes of 1.12-1.13 the policy must place: labels, the extended find, bulk operations
    for route in [
        ("PUT", "/studies/{id}/labels/{label}"),
        ("POST", "/tools/find"),
        ("POST", "/tools/bulk-delete"),
        ("POST", "/tools/bulk-modify"),
        ("POST", "/tools/count-resources"),
        ("GET", "/tools/labels"),
    ]:
        assert route in routes, route
    assert ROUTES_FILE.stat().st_size < 1_000_000


@pytest.mark.parametrize(("method", "template"), _committed_routes(), ids=str)
def test_every_route_has_its_account_class(method, template):
    assert _classes(method, template) == EXPECTED.get((method, template), set())
    assert http_allowed(CONFIG, "admin", method, _uri(template))  # people: everything


def test_every_expected_route_exists_in_orthanc():
    assert set(EXPECTED) <= set(_committed_routes())


def test_the_sidecar_changes_only_its_own_labels_and_metadata():
    study = f"/studies/{ORTHANC_ID}"
    for label in ("ai-urgent", "ai-priority", "ai-routine", "ai-pending", "ai-not-analyzed"):
        assert http_allowed(CONFIG, "sc", "PUT", f"{study}/labels/{label}")
        assert http_allowed(CONFIG, "sc", "DELETE", f"{study}/labels/{label}")
        assert not http_allowed(CONFIG, "vw", "PUT", f"{study}/labels/{label}")
    for label in ("teaching", "ai-urgent-x", "AI-URGENT"):
        assert not http_allowed(CONFIG, "sc", "PUT", f"{study}/labels/{label}")
    assert not http_allowed(CONFIG, "sc", "PUT", f"/series/{ORTHANC_ID}/labels/ai-urgent")
    assert not http_allowed(CONFIG, "sc", "PUT", f"{study}/metadata/Other")
    assert not http_allowed(CONFIG, "sc", "DELETE", f"{study}/metadata/NeuroRadixTriage")
    assert not http_allowed(CONFIG, "sc", "DELETE", f"/series/{ORTHANC_ID}", series_manufacturer=lambda _i: "Scanner")


def test_the_routes_of_the_installed_orthanc(orthanc_dist: OrthancDist):
    served = rest_routes(orthanc_dist)
    assert len(served) > 250
    unexpected = {route: _classes(*route) for route in served if _classes(*route) != EXPECTED.get(route, set())}
    assert unexpected == {}
