"""Who may do what in the node's Orthanc (stdlib only, no ``orthanc`` import).

Three kinds of account log in to Orthanc's HTTP server (``RegisteredUsers``):

* the **sidecar** (``SidecarUser``): DICOMweb reads, STOW-RS, ``POST /tools/lookup``,
  ``DELETE /series/{id}`` of the node's *own* output series only (a rerun removes its earlier
  results before storing the new ones), ``GET /system`` and ``/plugins`` (versions), and for
  triage ``PUT``/``DELETE`` of its own ``ai-*`` study labels, ``GET`` of a study's labels and
  ``PUT`` of the ``NeuroRadixTriage`` study metadata;
* the **viewer** proxy (``ViewerUser``): DICOMweb reads (GET) only, and like the sidecar
  ``POST /tools/find`` (studies by label) and ``GET /tools/labels``;
* **people**: every other registered user, Orthanc's administrators.

An account used beyond its scope gets 403 from Orthanc (the plugin's incoming-HTTP filter
answers False). Instances that claim to be the node's output -- its ``Manufacturer`` (compared
without case or extra spaces), or a ``SeriesInstanceUID`` of a stored series of the node's, which
would slip a foreign object into a result series -- are kept only when the sidecar's account stored them over HTTP, or when an administrator (people) uploads
them through Orthanc's own ``POST /instances`` (restoring a backup; an administrator can delete
anything anyway). Over C-STORE, STOW-RS by anyone but the sidecar, Lua or jobs they are refused,
and ``OverwriteInstances`` is false, so nothing the node stored can be replaced by a forgery.
"""

from __future__ import annotations

import base64
import binascii
import collections
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

PEOPLE = "people"
SIDECAR = "sidecar"
VIEWER = "viewer"

# DICOM C-STORE status "Refused: Not authorized" (PS3.7 C.4.2.1.4 / Annex C general statuses).
REFUSED_NOT_AUTHORIZED = 0x0124

_ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
_STOW = re.compile(r"^/dicom-web/studies(/[0-9.]{1,64})?/?$")
# Triage (docs/triage.md): the sidecar keeps one of its own labels on a study and the decision in
# one user metadata entry; no other label or metadata of a study is its to change.
TRIAGE_LABELS = ("ai-urgent", "ai-priority", "ai-routine", "ai-pending", "ai-not-analyzed")
TRIAGE_METADATA = "NeuroRadixTriage"
_STUDY = r"^/studies/[0-9a-f]{8}(-[0-9a-f]{8}){4}"
_TRIAGE_LABEL = re.compile(_STUDY + r"/labels/(" + "|".join(TRIAGE_LABELS) + r")$")
_STUDY_LABELS = re.compile(_STUDY + r"/labels$")
_PLUGIN_INFO = re.compile(r"^/plugins(/[a-z0-9-]{1,40})?$")  # versions, for /readyz and the start check
_TRIAGE_METADATA = re.compile(_STUDY + r"/metadata/" + TRIAGE_METADATA + r"$")


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
    # Readers (sidecar and viewer): find studies by label (the triage worklist); what it returns
    # they may already read over QIDO-RS.
    if (method, uri) in (("POST", "/tools/find"), ("GET", "/tools/labels")):
        return True
    if role == VIEWER:
        return False
    # the sidecar
    if method == "POST" and (_STOW.match(uri) or uri == "/tools/lookup"):
        return True
    if method == "GET" and (uri == "/system" or _STUDY_LABELS.match(uri) or _PLUGIN_INFO.match(uri)):
        return True
    if method in ("PUT", "DELETE") and _TRIAGE_LABEL.match(uri):
        return True
    if method == "PUT" and _TRIAGE_METADATA.match(uri):
        return True
    if method == "DELETE" and uri.startswith("/series/"):
        series_id = uri[len("/series/") :].rstrip("/")
        if not _ORTHANC_ID.match(series_id) or series_manufacturer is None:
            return False
        try:
            return is_own_manufacturer(series_manufacturer(series_id), config)
        except Exception:  # noqa: BLE001 - an unknown series (or any lookup error) is refused
            return False
    return False


def _folded(value: object) -> str:
    return " ".join(str(value).split()).casefold()


def is_own_manufacturer(value: object, config: AccessConfig) -> bool:
    """Whether a ``Manufacturer`` value is the node's, ignoring case and extra spaces."""
    return _folded(value) == _folded(config.own_manufacturer)


class RecentlyDeleted:
    """SeriesInstanceUIDs of the node's series that the sidecar deleted lately (a rerun in progress).

    Between deleting its earlier series and storing the new ones under the same UIDs, a rerun
    leaves the series absent from Orthanc; remembering the UIDs for ``ttl`` seconds keeps
    foreign objects out of that gap too. Thread-safe; holds at most ``max_entries`` UIDs.
    """

    def __init__(self, ttl: float = 3600.0, max_entries: int = 10000, clock: Callable[[], float] = time.monotonic):
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be > 0")
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._until: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, series_uid: str) -> None:
        """Remember ``series_uid`` for ``ttl`` seconds."""
        with self._lock:
            self._until[series_uid] = self.clock() + self.ttl
            self._until.move_to_end(series_uid)
            while len(self._until) > self.max_entries:
                self._until.popitem(last=False)

    def __contains__(self, series_uid: object) -> bool:
        with self._lock:
            until = self._until.get(str(series_uid))
            if until is None:
                return False
            if until < self.clock():
                del self._until[str(series_uid)]
                return False
            return True


def claims_own_output(
    tags: Mapping, config: AccessConfig, series_is_own: Optional[Callable[[str], bool]] = None
) -> bool:
    """Whether an instance's tags (Orthanc's simplified JSON) claim to be the node's output.

    Parameters
    ----------
    tags:
        ``Manufacturer``, ``SeriesInstanceUID`` ...
    config:
        The node's Manufacturer.
    series_is_own:
        ``f(SeriesInstanceUID) -> bool``: whether a stored series of that UID is the node's
        (Orthanc's REST API in the plugin). Not asked when None; an error counts as "own"
        (fail closed).
    """
    if is_own_manufacturer(tags.get("Manufacturer", ""), config):
        return True
    series_uid = str(tags.get("SeriesInstanceUID", ""))
    if series_is_own is None or not series_uid:
        return False
    try:
        return bool(series_is_own(series_uid))
    except Exception:  # noqa: BLE001 - a failed lookup refuses the instance (the sender may retry)
        return True


def instance_allowed(
    tags: Mapping,
    config: AccessConfig,
    over_dicom: bool,
    http_user: Optional[str],
    http_uri: str = "",
    series_is_own: Optional[Callable[[str], bool]] = None,
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
    series_is_own:
        See :func:`claims_own_output`.
    """
    if not claims_own_output(tags, config, series_is_own):
        return True
    if over_dicom or http_user is None:
        return False
    role = config.role(http_user)
    return role == SIDECAR or (role == PEOPLE and http_uri.rstrip("/") == "/instances")
