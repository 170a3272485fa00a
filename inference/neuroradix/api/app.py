"""The sidecar's HTTP API (FastAPI): the app factory, authentication and health.

Every ``/v1`` route needs ``Authorization: Bearer <SIDECAR_TOKEN>``; ``/healthz`` and ``/readyz``
answer without it and reveal nothing about studies. OpenAPI docs are at ``/docs``. The routes
live by topic: :mod:`~neuroradix.api.jobs` (queue and read jobs), :mod:`~neuroradix.api.results`
(results zip, report attention) and :mod:`~neuroradix.api.analyze` (uploaded studies). Routes
only route: analysis runs in the worker processes, never in the API process.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from neuroradix import __version__
from neuroradix.api import analyze, jobs, results
from neuroradix.api.deps import authorized
from neuroradix.config import Settings
from neuroradix.errors import NeuroRadixError
from neuroradix.jobs.ledger import Ledger
from neuroradix.jobs.reconciler import Reconciler
from neuroradix.pacs.dicomweb import PacsClient

LOG = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    ledger: Optional[Ledger] = None,
    pacs: Optional[PacsClient] = None,
    run_reconciler: bool = True,
) -> FastAPI:
    """Build the API.

    Parameters
    ----------
    settings:
        The node's settings (token, var directory, pipeline version ...).
    ledger, pacs:
        Built from the settings when not given.
    run_reconciler:
        Run the periodic QIDO sweep in this process (one per node).

    Returns
    -------
    FastAPI
        The app, with ``state.settings``, ``state.ledger`` and ``state.pacs`` set.
    """
    ledger = ledger or Ledger(settings.resolved_ledger_url)
    pacs = pacs or PacsClient(
        settings.dicomweb_url,
        settings.orthanc_user,
        settings.orthanc_password.get_secret_value(),
        timeout=settings.http_timeout_seconds,
    )
    reconciler = Reconciler(settings, ledger, pacs)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_reconciler:
            reconciler.start()
        yield
        reconciler.stop()

    app = FastAPI(
        title="Neuro Radix sidecar",
        version=__version__,
        description="Jobs, status and results of the Neuro Radix chest-CT AI node.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.ledger, app.state.pacs = settings, ledger, pacs

    @app.exception_handler(NeuroRadixError)
    async def _node_error(_request, exc: NeuroRadixError):  # noqa: ANN001
        return JSONResponse(status_code=502, content={"detail": f"{type(exc).__name__}: {exc}"})

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Readiness: the ledger and the PACS answer."""
        checks = {}
        try:
            ledger.counts()
            checks["ledger"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["ledger"] = f"error: {type(exc).__name__}"
        try:
            pacs.ping()
            checks["pacs"] = "ok"
        except NeuroRadixError as exc:
            checks["pacs"] = f"error: {exc}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, "checks": checks})

    for module in (jobs, results, analyze):
        app.include_router(module.router, dependencies=[Depends(authorized)])
    return app
