"""Durable job machinery: the ledger, the worker loop (the only broad ``except``), the reconciler.

``ledger`` (jobs, leases, SQLite or PostgreSQL), ``worker`` (one job at a time, the one worker id),
``retry`` (which errors retry, and when), ``reconciler`` (the periodic sweep), ``metrics``.
"""

from importlib import import_module
from typing import Any

_OFFERS = {
    "Ledger": "ledger",
    "JobState": "ledger",
    "Job": "ledger",
    "Worker": "worker",
    "make_worker_id": "worker",
    "RetryPolicy": "retry",
    "Reconciler": "reconciler",
    "sweep": "reconciler",
}
"""What this room offers, and the module it lives in: imported on first use, so importing one
module of the room does not import the others (and their heavy dependencies)."""

__all__ = sorted(_OFFERS)


def __getattr__(name: str) -> Any:
    if name in _OFFERS:
        return getattr(import_module(f"{__name__}.{_OFFERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
