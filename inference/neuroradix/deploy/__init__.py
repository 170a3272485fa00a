"""Running a node on this machine: ``make up`` and what it starts.

``launcher`` (``neuroradix up|down|status``), ``orthanc`` (Orthanc's runtime configuration and
process, the packaged plugin and ``orthanc.json``), ``senders`` (known C-STORE senders),
``postgres`` (the node's PostgreSQL cluster), ``envfile`` (``var/*.env`` files, what
``worker.env`` holds), ``orthanc_dist`` (which Orthanc runs: the current one installed from Debian
sid, or the host's; ``make setup`` installs it).
"""

from importlib import import_module
from typing import Any

_OFFERS = {
    "up": "launcher",
    "down": "launcher",
    "NodeConfig": "launcher",
    "OrthancProcess": "orthanc",
    "OrthancSpec": "orthanc",
    "packaged_file": "orthanc",
    "OrthancDist": "orthanc_dist",
    "OrthancDistSettings": "orthanc_dist",
    "find_orthanc": "orthanc_dist",
    "Sender": "senders",
    "PostgresCluster": "postgres",
    "read_env_file": "envfile",
    "write_env_file": "envfile",
    "worker_env_values": "envfile",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
