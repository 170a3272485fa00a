"""The node's processes: the worker entry point, the one worker supervisor, ``neuroradix serve``.

``supervisor`` (:class:`WorkerSupervisor`: restarts with backoff, pid files), ``worker_host``
(``neuroradix worker``: one worker, or several under the supervisor), ``sidecar`` (the API, the
reconciler and supervised workers in one process).
"""

from importlib import import_module
from typing import Any

_OFFERS = {
    "WorkerSupervisor": "supervisor",
    "run_worker": "worker_host",
    "run_worker_host": "worker_host",
    "serve": "sidecar",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
