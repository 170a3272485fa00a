"""What an Orthanc says about itself (``GET /system``, ``GET /plugins``), and the oldest one the node runs on.

Orthanc up to 1.12.10 carries CVE-2026-5437 ... CVE-2026-5445 (out-of-bounds reads and writes in
DICOM image decoding, gzip and zip bombs, an unbounded ``Content-Length``), all reachable by
anyone who may send a DICOM file; 1.12.11 fixes them. The launcher (``make up``) and the sidecar's
``/readyz`` read ``/system`` and refuse an older Orthanc unless the operator sets
``NEURORADIX_ALLOW_OLD_ORTHANC=1`` on purpose. Both print the versions of Orthanc and of its
plugins, so a site can see what it runs.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import requests

from neuroradix.errors import ConfigError, TransientError

logger = logging.getLogger(__name__)

MINIMUM_VERSION = (1, 12, 11)
MINIMUM_VERSION_TEXT = "1.12.11"
FIXED_CVES = "CVE-2026-5437 ... CVE-2026-5445"
ALLOW_OLD_SETTING = "NEURORADIX_ALLOW_OLD_ORTHANC"
"""The setting that lets the node run on an Orthanc older than :data:`MINIMUM_VERSION` anyway."""

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


class OrthancTooOldError(ConfigError):
    """The Orthanc in front of the node is older than :data:`MINIMUM_VERSION` (known CVEs)."""


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.12.11"`` -> ``(1, 12, 11)``; a Debian version (``"1.13.0+dfsg-1+b1"``) reads the same.

    Orthanc built from its development branch reports ``"mainline"``: that counts as the newest.

    Parameters
    ----------
    text
        The ``Version`` of ``/system``, ``Orthanc --version`` or a package version.

    Returns
    -------
    tuple of int
        Major, minor, patch.

    Raises
    ------
    ValueError
        When ``text`` holds no version.
    """
    value = str(text).strip()
    if value.lower() == "mainline":
        return (999, 0, 0)
    match = _VERSION.match(value)
    if match is None:
        raise ValueError(f"not an Orthanc version: {value!r}")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


def check_version(version: str, allow_old: bool = False) -> None:
    """Refuse an Orthanc older than :data:`MINIMUM_VERSION`.

    Parameters
    ----------
    version
        Orthanc's version as it reports it.
    allow_old
        The operator's override (:data:`ALLOW_OLD_SETTING`): log a warning instead of refusing.

    Raises
    ------
    OrthancTooOldError
        With a message naming the CVEs, the minimum and the override setting.
    """
    try:
        too_old = parse_version(version) < MINIMUM_VERSION
    except ValueError:
        too_old = True
    if not too_old:
        return
    message = (
        f"Orthanc {version} is older than {MINIMUM_VERSION_TEXT}, which fixes {FIXED_CVES} "
        "(out-of-bounds reads and writes in DICOM decoding, gzip/zip bombs, unbounded Content-Length). "
        "Install a current Orthanc (`make setup` installs one; docs/security.md), or set "
        f"{ALLOW_OLD_SETTING}=1 to run on this one anyway"
    )
    if allow_old:
        logger.warning("%s: running anyway because %s is set", message.split(". Install")[0], ALLOW_OLD_SETTING)
        return
    raise OrthancTooOldError(message)


@dataclass(frozen=True)
class OrthancInfo:
    """Orthanc's version and those of its plugins.

    Parameters
    ----------
    version
        ``/system`` ``Version``.
    has_labels
        Whether the index supports study labels (``HasLabels``; Orthanc 1.12.0+).
    database_backend
        ``DatabaseBackendPlugin`` (e.g. the PostgreSQL index), None for Orthanc's SQLite.
    plugins
        Plugin id -> version (``GET /plugins/{id}``).
    """

    version: str
    has_labels: bool = False
    database_backend: str | None = None
    plugins: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_current(self) -> bool:
        """Whether this Orthanc is at least :data:`MINIMUM_VERSION`."""
        try:
            return parse_version(self.version) >= MINIMUM_VERSION
        except ValueError:
            return False

    def summary(self) -> str:
        """One line, e.g. ``Orthanc 1.13.0 (dicom-web 1.24, gdcm 1.8, python 7.1)``."""
        plugins = ", ".join(f"{name} {version}" for name, version in sorted(self.plugins.items()))
        return f"Orthanc {self.version}" + (f" ({plugins})" if plugins else "")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"version", "has_labels", "database_backend", "plugins"}``."""
        return {
            "version": self.version,
            "has_labels": self.has_labels,
            "database_backend": self.database_backend,
            "plugins": dict(sorted(self.plugins.items())),
        }


def read_orthanc_info(get_json: Callable[[str], Any]) -> OrthancInfo:
    """Ask an Orthanc for its version and its plugins' versions.

    Parameters
    ----------
    get_json
        ``get_json(path) -> decoded JSON`` of a GET on Orthanc's REST API (``/system``,
        ``/plugins``, ``/plugins/{id}``), authenticated by the caller.

    Returns
    -------
    OrthancInfo
    """
    system = get_json("/system")
    plugins: dict[str, str] = {}
    for plugin_id in get_json("/plugins"):
        if str(plugin_id).endswith(".js"):  # explorer.js: Orthanc Explorer's extensions, not a plugin
            continue
        plugins[str(plugin_id)] = str(get_json(f"/plugins/{plugin_id}").get("Version", "?"))
    backend = system.get("DatabaseBackendPlugin")
    return OrthancInfo(
        version=str(system.get("Version", "?")),
        has_labels=bool(system.get("HasLabels", False)),
        database_backend=str(backend) if backend else None,
        plugins=plugins,
    )


def http_get_json(orthanc_url: str, user: str, password: str, timeout: float = 10.0) -> Callable[[str], Any]:
    """A ``get_json`` for :func:`read_orthanc_info` over HTTP with basic auth.

    Parameters
    ----------
    orthanc_url
        Orthanc's REST root, e.g. ``http://127.0.0.1:8042``.
    user, password
        An Orthanc account allowed ``GET /system`` and ``/plugins`` (people, or the sidecar's).
    timeout
        Seconds per request.

    Returns
    -------
    callable
        Raises :class:`TransientError` when Orthanc does not answer or refuses.
    """
    root = orthanc_url.rstrip("/")
    session = requests.Session()
    session.auth = (user, password)

    def get_json(path: str) -> Any:
        try:
            answer = session.get(root + path, timeout=timeout)
            answer.raise_for_status()
            return answer.json()
        except (requests.RequestException, json.JSONDecodeError) as exc:
            raise TransientError(f"Orthanc {path.split('/')[1]}: {type(exc).__name__}") from exc

    return get_json
