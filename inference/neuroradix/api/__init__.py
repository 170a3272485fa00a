"""The sidecar's HTTP API, routes only: the work goes to a job.

``app`` (the factory, auth, health), ``deps`` (settings, ledger, PACS, the bearer tokens and their
scopes), ``jobs``, ``results``, ``analyze`` (uploads), ``metrics``.
"""

from importlib import import_module
from typing import Any

_OFFERS = {
    "create_app": "app",
    "Readiness": "app",
    "BearerAuthMiddleware": "deps",
    "JobRequest": "jobs",
    "JobView": "jobs",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
