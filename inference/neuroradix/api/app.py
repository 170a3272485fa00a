"""The sidecar's HTTP API (FastAPI): the app factory, authentication and health.

Every ``/v1`` route needs ``Authorization: Bearer <token>``, checked before the body is read
(:class:`~neuroradix.api.deps.BearerAuthMiddleware`): the admin token for everything, the
reader's for GETs, the plugin's for ``POST /v1/jobs`` only (:mod:`neuroradix.api.deps`).
``/healthz`` and ``/readyz`` answer without it and reveal nothing about studies; ``/readyz``
answers from a check at most ``readyz_cache_seconds`` old. OpenAPI docs are at ``/docs``. The routes
live by topic: :mod:`~neuroradix.api.jobs` (queue and read jobs), :mod:`~neuroradix.api.results`
(results zip, report attention) and :mod:`~neuroradix.api.analyze` (uploaded studies). Routes
only route: analysis runs in the worker processes, never in the API process.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Optional

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from neuroradix import __version__
from neuroradix.api import analyze, jobs, metrics, results, triage
from neuroradix.api.deps import BearerAuthMiddleware, authorized
from neuroradix.config import Settings
from neuroradix.errors import NeuroRadixError, PacsAuthError
from neuroradix.jobs.ledger import Ledger
from neuroradix.jobs.reconciler import Reconciler
from neuroradix.jobs.triage import build_dispatcher
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pacs.orthanc_info import OrthancInfo, check_version, http_get_json, read_orthanc_info

logger = logging.getLogger(__name__)


class Readiness:
    """The ledger and PACS checks behind ``/readyz``, run at most once per ``max_age`` seconds.

    Concurrent callers wait for the one check in progress and share its result, so a flood of
    anonymous ``/readyz`` calls costs the PACS one request per ``max_age``.

    Parameters
    ----------
    ledger, pacs:
        What is checked (``ledger.counts()``, ``pacs.ping()``).
    max_age:
        Seconds a result is reused (0: check on every call).
    clock:
        Monotonic seconds; injected by tests.
    orthanc_info:
        Reads Orthanc's and its plugins' versions (``GET /system``, ``/plugins``); the check
        ``orthanc`` is red on one older than 1.12.11 unless ``allow_old_orthanc``. None: not checked.
    allow_old_orthanc:
        The operator's override (``NEURORADIX_ALLOW_OLD_ORTHANC``).
    """

    def __init__(
        self,
        ledger: Ledger,
        pacs: PacsClient,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        orthanc_info: Optional[Callable[[], OrthancInfo]] = None,
        allow_old_orthanc: bool = False,
    ) -> None:
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0, got {max_age}")
        self.ledger, self.pacs, self.max_age, self.clock = ledger, pacs, max_age, clock
        self.orthanc_info, self.allow_old_orthanc = orthanc_info, allow_old_orthanc
        self.orthanc: Optional[OrthancInfo] = None  # the last versions read
        self._lock = threading.Lock()
        self._checked_at: Optional[float] = None
        self._checks: dict[str, str] = {}

    def checks(self) -> dict[str, str]:
        """``{"ledger": "ok" | "error: ...", "pacs": "ok" | "error: ..."}``, from the cache when fresh."""
        with self._lock:
            now = self.clock()
            if self._checked_at is None or now - self._checked_at >= self.max_age:
                self._checks = self._run()
                self._checked_at = self.clock()
            return dict(self._checks)

    def _run(self) -> dict[str, str]:
        checks = {}
        try:
            self.ledger.counts()
            checks["ledger"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any ledger failure is "not ready"
            checks["ledger"] = f"error: {type(exc).__name__}"
        try:
            self.pacs.ping()
            checks["pacs"] = "ok"
        except PacsAuthError as exc:
            logger.error("readiness: %s (rotated password? see docs/security.md)", exc)
            checks["pacs"] = f"error: {exc}"
        except NeuroRadixError as exc:
            checks["pacs"] = f"error: {exc}"
        if self.orthanc_info is not None:
            try:
                self.orthanc = self.orthanc_info()
                check_version(self.orthanc.version, self.allow_old_orthanc)
                checks["orthanc"] = "ok"
            except NeuroRadixError as exc:  # unreachable, or too old (the message names the CVEs)
                checks["orthanc"] = f"error: {exc}"
        return checks


def create_app(
    settings: Settings,
    ledger: Optional[Ledger] = None,
    pacs: Optional[PacsClient] = None,
    run_reconciler: bool = True,
    orthanc_info: Optional[Callable[[], OrthancInfo]] = None,
) -> FastAPI:
    """Build the API.

    Parameters
    ----------
    settings:
        The node's settings (token, var directory, pipeline version ...).
    ledger, pacs:
        Built from the settings when not given.
    run_reconciler:
        Run the periodic QIDO sweep and the triage sweep in this process (one per node).
    orthanc_info:
        Reads Orthanc's version for ``/readyz`` (:class:`Readiness`); built from the settings
        when ``pacs`` is too. A ``pacs`` given without it (a stand-in) has no version check.

    Returns
    -------
    FastAPI
        The app, with ``state.settings``, ``state.ledger`` and ``state.pacs`` set.
    """
    ledger = ledger or Ledger(settings.resolved_ledger_url)
    if pacs is None and orthanc_info is None:
        orthanc_get = http_get_json(
            settings.orthanc_url,
            settings.orthanc_user,
            settings.orthanc_password.get_secret_value(),
            timeout=min(settings.http_timeout_seconds, 10.0),
        )
        orthanc_info = lambda: read_orthanc_info(orthanc_get)  # noqa: E731 - bound to this Orthanc
    pacs = pacs or PacsClient(
        settings.dicomweb_url,
        settings.orthanc_user,
        settings.orthanc_password.get_secret_value(),
        timeout=settings.http_timeout_seconds,
    )
    reconciler = Reconciler(settings, ledger, pacs)
    dispatcher = build_dispatcher(settings, ledger)  # an invalid policy file stops the start here
    readiness = Readiness(
        ledger,
        pacs,
        settings.readyz_cache_seconds,
        orthanc_info=orthanc_info,
        allow_old_orthanc=settings.allow_old_orthanc,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_reconciler:
            reconciler.start()
            dispatcher.start()
        yield
        reconciler.stop()
        dispatcher.stop()

    app = FastAPI(
        title="Neuro Radix sidecar",
        version=__version__,
        description="Jobs, status and results of the Neuro Radix chest-CT AI node.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.ledger, app.state.pacs = settings, ledger, pacs
    app.state.readiness = readiness
    app.add_middleware(BearerAuthMiddleware, settings=settings)

    @app.exception_handler(NeuroRadixError)
    async def _node_error(_request, exc: NeuroRadixError):  # noqa: ANN001
        return JSONResponse(status_code=502, content={"detail": f"{type(exc).__name__}: {exc}"})

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Readiness: the ledger and the PACS answer (and accept the sidecar's credentials), Orthanc is
        1.12.11 or later; with Orthanc's and its plugins' versions. Cached briefly."""
        checks = app.state.readiness.checks()
        ready = all(v == "ok" for v in checks.values())
        content: dict = {"ready": ready, "checks": checks}
        if app.state.readiness.orthanc is not None:  # versions of Orthanc and its plugins, no study data
            content["orthanc"] = app.state.readiness.orthanc.as_dict()
        return JSONResponse(status_code=200 if ready else 503, content=content)

    app.state.triage = dispatcher
    for module in (jobs, results, analyze, triage):
        app.include_router(module.router, dependencies=[Depends(authorized)])
    app.include_router(metrics.router)  # /metrics: reader or admin token (require_scope(READ))
    return app
