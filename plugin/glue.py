"""Orthanc glue for Neuro Radix: the only module that imports ``orthanc``.

Loaded by Orthanc's Python plugin (``"PythonScript"`` in orthanc.json). On ``STABLE_STUDY`` it
queues the study for :class:`handoff.Handoff` and returns at once; the hand-off thread does the
rest. Settings come from the ``NeuroRadix`` section of the configuration, with the secret and the
URL from the environment (``NEURORADIX_SIDECAR_PLUGIN_TOKEN``, ``NEURORADIX_SIDECAR_URL``), so no
secret sits in a configuration file. The plugin's token may only queue studies (``POST /v1/jobs``);
``NEURORADIX_SIDECAR_TOKEN`` (the admin token) is read only when no plugin token is set, for
deployments configured before the scoped tokens.

It also enforces :mod:`policy`: the incoming-HTTP filter gives each Orthanc account its scope
(403 beyond it), and the received-instance callback and the C-STORE filter refuse instances that
claim to be the node's output (its Manufacturer, or a series UID of a stored series of the node's,
looked up with ``/tools/lookup``) unless the sidecar's account stored them over HTTP (or an
administrator through Orthanc's own ``POST /instances``, e.g. restoring a backup). The filter runs
in the HTTP thread that then stores the instance, so it records the thread's user for the
callback. Without a valid ``NeuroRadix`` section every account is refused (fail closed).
"""

import json
import logging
import os
import threading

import orthanc

if __package__:  # imported as neuroradix_plugin.glue (tests, tools of the installed node)
    from .handoff import Handoff, HandoffConfig
    from .policy import (
        REFUSED_NOT_AUTHORIZED,
        SIDECAR,
        AccessConfig,
        RecentlyDeleted,
        basic_auth_user,
        http_allowed,
        instance_allowed,
        is_own_manufacturer,
    )
else:  # Orthanc's "PythonScript": a top-level module, and Orthanc puts this folder first on sys.path
    from handoff import Handoff, HandoffConfig
    from policy import (
        REFUSED_NOT_AUTHORIZED,
        SIDECAR,
        AccessConfig,
        RecentlyDeleted,
        basic_auth_user,
        http_allowed,
        instance_allowed,
        is_own_manufacturer,
    )


class _OrthancLogHandler(logging.Handler):
    """Send the hand-off's log records to Orthanc's log."""

    def emit(self, record: logging.LogRecord) -> None:
        message = "[neuroradix] " + self.format(record)
        if record.levelno >= logging.ERROR:
            orthanc.LogError(message)
        elif record.levelno >= logging.WARNING:
            orthanc.LogWarning(message)
        else:
            orthanc.LogInfo(message)


def _config() -> HandoffConfig:
    section = json.loads(orthanc.GetConfiguration()).get("NeuroRadix", {})
    return HandoffConfig(
        sidecar_url=os.environ.get("NEURORADIX_SIDECAR_URL", section.get("SidecarUrl", "")),
        sidecar_token=os.environ.get("NEURORADIX_SIDECAR_PLUGIN_TOKEN")
        or os.environ.get("NEURORADIX_SIDECAR_TOKEN", ""),
        own_manufacturer=section.get("OwnManufacturer", "Neuro Radix"),
        modalities=tuple(section.get("Modalities", [])),
    )


logger = logging.getLogger("neuroradix.plugin")
logger.addHandler(_OrthancLogHandler())
logger.setLevel(logging.INFO)
logger.propagate = False

try:
    HANDOFF = Handoff(_config(), rest_get=orthanc.RestApiGet)
except ValueError as exc:
    HANDOFF = None
    orthanc.LogError(f"[neuroradix] hand-off disabled, configuration is invalid: {exc}")


def on_change(change_type, level, resource_id):
    """Orthanc change callback: queue stable studies, nothing else."""
    if HANDOFF is None:
        return
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        HANDOFF.start()
    elif change_type == orthanc.ChangeType.STABLE_STUDY:
        HANDOFF.submit(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        HANDOFF.stop()


orthanc.RegisterOnChangeCallback(on_change)

try:
    ACCESS = AccessConfig.from_section(json.loads(orthanc.GetConfiguration()).get("NeuroRadix", {}))
except ValueError as exc:
    ACCESS = None
    orthanc.LogError(f"[neuroradix] access policy invalid, refusing every request and store: {exc}")

_METHODS = {
    orthanc.HttpMethod.GET: "GET",
    orthanc.HttpMethod.POST: "POST",
    orthanc.HttpMethod.PUT: "PUT",
    orthanc.HttpMethod.DELETE: "DELETE",
}
_HTTP_REQUEST = {}  # thread id -> (user, path) of the HTTP request that thread is serving


def _series_manufacturer(series_id):
    return json.loads(orthanc.RestApiGet(f"/series/{series_id}")).get("MainDicomTags", {}).get("Manufacturer", "")


DELETED_OWN_SERIES = RecentlyDeleted()


def _series_is_own(series_uid):
    """Whether a series with this SeriesInstanceUID is the node's: stored, or deleted by a rerun lately."""
    if series_uid in DELETED_OWN_SERIES:
        return True
    found = json.loads(orthanc.RestApiPost("/tools/lookup", series_uid))
    return any(
        is_own_manufacturer(_series_manufacturer(item["ID"]), ACCESS) for item in found if item.get("Type") == "Series"
    )


def _remember_deleted(uri):
    series_id = uri[len("/series/") :].rstrip("/")
    try:
        tags = json.loads(orthanc.RestApiGet(f"/series/{series_id}")).get("MainDicomTags", {})
    except Exception:  # noqa: BLE001 - the filter must answer; the lookup in _series_is_own still applies
        orthanc.LogWarning("[neuroradix] could not read a series the sidecar deletes")
        return
    if tags.get("SeriesInstanceUID"):
        DELETED_OWN_SERIES.add(str(tags["SeriesInstanceUID"]))


def http_filter(uri, method=None, ip=None, headers=None, get=None, **_):
    """Incoming-HTTP filter: each account within its scope (False answers 403)."""
    user = basic_auth_user(headers or {})
    _HTTP_REQUEST[threading.get_ident()] = (user, uri)
    if ACCESS is None:
        return False
    allowed = http_allowed(ACCESS, user, _METHODS.get(method, "OTHER"), uri, _series_manufacturer)
    if allowed and method == orthanc.HttpMethod.DELETE and ACCESS.role(user) == SIDECAR:
        _remember_deleted(uri)  # a rerun: keep foreign objects out until it stores the series again
    if not allowed:
        orthanc.LogWarning(
            f"[neuroradix] refused {_METHODS.get(method, method)} {uri.split('/')[1][:20]} "
            f"for account {ACCESS.role(user)}"
        )
    return allowed


def on_received_instance(received_dicom, origin):
    """Every store (C-STORE, REST, STOW-RS): discard forged copies of the node's output."""
    over_dicom = origin == orthanc.InstanceOrigin.DICOM_PROTOCOL
    http_user, http_uri = None, ""
    if origin in (orthanc.InstanceOrigin.REST_API, orthanc.InstanceOrigin.PLUGIN):
        http_user, http_uri = _HTTP_REQUEST.get(threading.get_ident(), (None, ""))
    if ACCESS is None:
        return orthanc.ReceivedInstanceAction.DISCARD, None
    tags = json.loads(orthanc.CreateDicomInstance(received_dicom).GetInstanceSimplifiedJson())
    series_check = None if over_dicom else _series_is_own  # C-STORE: on_cstore has looked already
    if instance_allowed(tags, ACCESS, over_dicom, http_user, http_uri, series_check):
        return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
    orthanc.LogWarning("[neuroradix] discarded an instance that claims to be this node's output")
    return orthanc.ReceivedInstanceAction.DISCARD, None


def on_cstore(instance):
    """C-STORE filter: refuse (status 0x0124) an instance claiming to be the node's output."""
    if ACCESS is None:
        return REFUSED_NOT_AUTHORIZED
    tags = json.loads(instance.GetInstanceSimplifiedJson())
    if instance_allowed(tags, ACCESS, True, None, series_is_own=_series_is_own):
        return 0
    orthanc.LogWarning("[neuroradix] refused a C-STORE that claims to be this node's output")
    return REFUSED_NOT_AUTHORIZED


orthanc.RegisterIncomingHttpRequestFilter(http_filter)
orthanc.RegisterReceivedInstanceCallback(on_received_instance)
orthanc.RegisterIncomingCStoreInstanceFilter(on_cstore)
