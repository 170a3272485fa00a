"""Who may do what in the node's Orthanc (stdlib only, no ``orthanc`` import).

Three kinds of account log in to Orthanc's HTTP server (``RegisteredUsers``):

* the **sidecar** (``SidecarUser``): DICOMweb reads, STOW-RS, ``POST /tools/lookup``, and
  ``DELETE /series/{id}`` of the node's *own* output series only (a rerun removes its earlier
  results before storing the new ones);
* the **viewer** proxy (``ViewerUser``): DICOMweb reads (GET) only;
* **people**: every other registered user, Orthanc's administrators.

An account used beyond its scope gets 403 from Orthanc (the plugin's incoming-HTTP filter
answers False). Instances that claim to be the node's output (its ``Manufacturer``) are kept
only when the sidecar's account stored them over HTTP, or when an administrator (people) uploads
them through Orthanc's own ``POST /instances`` (restoring a backup; an administrator can delete
anything anyway). Over C-STORE, STOW-RS by anyone but the sidecar, Lua or jobs they are refused,
and ``OverwriteInstances`` is false, so nothing the node stored can be replaced by a forgery.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

PEOPLE = "people"
SIDECAR = "sidecar"
VIEWER = "viewer"

# DICOM C-STORE status "Refused: Not authorized" (PS3.7 C.4.2.1.4 / Annex C general statuses).
REFUSED_NOT_AUTHORIZED = 0x0124

_ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
_STOW = re.compile(r"^/dicom-web/studies(/[0-9.]{1,64})?/?$")


@dataclass(frozen=True)
class AccessConfig:
    """The accounts and the node's own identity, from the ``NeuroRadix`` configuration section.

    Parameters
    ----------
    sidecar_user:
        Orthanc user name of the sidecar's account.
    viewer_user:
        Orthanc user name of the viewer proxy's account.
    own_manufacturer:
        The ``Manufacturer`` the node writes into its results.
    """

    sidecar_user: str
    viewer_user: str
    own_manufacturer: str = "Neuro Radix"

    def __post_init__(self) -> None:
        if not self.sidecar_user or not self.viewer_user:
            raise ValueError("SidecarUser and ViewerUser must be set in the NeuroRadix section")
        if self.sidecar_user == self.viewer_user:
            raise ValueError("SidecarUser and ViewerUser must be different accounts")
        if not self.own_manufacturer:
            raise ValueError("OwnManufacturer must not be empty")

    @classmethod
    def from_section(cls, section: Mapping) -> AccessConfig:
        """Build from the ``NeuroRadix`` section of Orthanc's configuration."""
        return cls(
            sidecar_user=str(section.get("SidecarUser", "")),
            viewer_user=str(section.get("ViewerUser", "")),
            own_manufacturer=str(section.get("OwnManufacturer", "Neuro Radix")),
        )

    def role(self, user: str) -> str:
        """``sidecar``, ``viewer`` or ``people`` for an authenticated Orthanc user."""
        if user == self.sidecar_user:
            return SIDECAR
        if user == self.viewer_user:
            return VIEWER
        return PEOPLE


def basic_auth_user(headers: Mapping[str, str]) -> str:
    """The user name in an ``Authorization: Basic`` header ("" if there is none).

    Orthanc has checked the password before the filter runs; only the name is read here.
    """
    value = ""
    for key, item in headers.items():
        if key.lower() == "authorization":
            value = item
            break
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[0]


def http_allowed(
    config: AccessConfig,
    user: str,
    method: str,
    uri: str,
    series_manufacturer: Optional[Callable[[str], str]] = None,
) -> bool:
    """Whether ``user`` may send ``method`` to ``uri`` (Orthanc has normalised the path).

    Parameters
    ----------
    config:
        The accounts.
    user:
        Authenticated Orthanc user name ("" when authentication is off: treated as people).
    method:
        ``GET``, ``POST``, ``PUT`` or ``DELETE`` (Orthanc maps HEAD to GET).
    uri:
        The request path, without the query string.
    series_manufacturer:
        ``f(orthanc_series_id) -> Manufacturer`` of a stored series (Orthanc's REST API in
        the plugin); asked only for a sidecar's ``DELETE /series/{id}``.

    Returns
    -------
    bool
        True to let Orthanc answer, False for 403.
    """
    role = config.role(user)
    if role == PEOPLE:
        return True
    if "/../" in uri + "/" or "/./" in uri + "/" or "%" in uri or "\\" in uri:
        return False
    is_dicomweb = uri == "/dicom-web" or uri.startswith("/dicom-web/")
    if method == "GET" and is_dicomweb:
        return True
    if role == VIEWER:
        return False
    # the sidecar
    if method == "POST" and (_STOW.match(uri) or uri == "/tools/lookup"):
        return True
    if method == "DELETE" and uri.startswith("/series/"):
        series_id = uri[len("/series/") :].rstrip("/")
        if not _ORTHANC_ID.match(series_id) or series_manufacturer is None:
            return False
        try:
            return series_manufacturer(series_id) == config.own_manufacturer
        except Exception:  # noqa: BLE001 - an unknown series (or any lookup error) is refused
            return False
    return False


def claims_own_output(tags: Mapping, config: AccessConfig) -> bool:
    """Whether an instance's tags (Orthanc's simplified JSON) claim to be the node's output."""
    return str(tags.get("Manufacturer", "")).strip() == config.own_manufacturer


def instance_allowed(
    tags: Mapping,
    config: AccessConfig,
    over_dicom: bool,
    http_user: Optional[str],
    http_uri: str = "",
) -> bool:
    """Whether Orthanc may keep a received instance.

    Parameters
    ----------
    tags:
        The instance's simplified JSON (``Manufacturer``, ``SOPInstanceUID`` ...).
    config:
        The accounts and the node's Manufacturer.
    over_dicom:
        True for C-STORE (the DICOM port).
    http_user:
        The Orthanc user of the HTTP request that stores it (REST or STOW-RS), None when the
        instance did not come over HTTP (C-STORE, Lua, jobs).
    http_uri:
        The path of that HTTP request.
    """
    if not claims_own_output(tags, config):
        return True
    if over_dicom or http_user is None:
        return False
    role = config.role(http_user)
    return role == SIDECAR or (role == PEOPLE and http_uri.rstrip("/") == "/instances")
