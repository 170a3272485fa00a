"""The sidecar's HTTP API (FastAPI): jobs, health, and results.

Every ``/v1`` route needs ``Authorization: Bearer <SIDECAR_TOKEN>``; ``/healthz`` and ``/readyz``
answer without it and reveal nothing about studies. OpenAPI docs are at ``/docs``.
"""
from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator

from neuroradix import __version__
from neuroradix.api.results import add_result_routes
from neuroradix.config import Settings
from neuroradix.errors import NeuroRadixError
from neuroradix.jobs.ledger import JobState, Ledger
from neuroradix.jobs.reconciler import Reconciler
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.uids import short_hash, valid_uid

LOG = logging.getLogger(__name__)

class JobRequest(BaseModel):
    """Ask for a study to be processed (the plugin does this on STABLE_STUDY)."""

    study_uid: str = Field(description="StudyInstanceUID of a study stored in the node's Orthanc")
    rerun: bool = Field(False, description="Queue again even if a job for this study already ended")
    trigger: str = Field("api", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    source_fingerprint: Optional[str] = Field(
        None, pattern=r"^[0-9a-f]{8,64}$",
        description="Hash of the study's source series and instance counts (sent by the plugin); "
        "a finished job whose study changed since is queued again",
    )

    @field_validator("study_uid")
    @classmethod
    def _uid(cls, value: str) -> str:
        return valid_uid(value)


class JobView(BaseModel):
    id: int
    study_uid: str
    pipeline_version: str
    state: str
    trigger: str
    attempts: int
    max_attempts: int
    error_class: Optional[str]
    error_message: Optional[str]
    timings: dict
    input_series_uid: Optional[str]
    output_uids: list
    details: dict
    created_at: str
    updated_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    lease_expires_at: Optional[str]


def _view(job) -> JobView:
    data = job.to_dict()
    return JobView(**{k: data[k] for k in JobView.model_fields})


def create_app(
    settings: Settings,
    ledger: Optional[Ledger] = None,
    pacs: Optional[PacsClient] = None,
    run_reconciler: bool = True,
) -> FastAPI:
    """Build the API. The reconciler runs in this process (one per node)."""
    ledger = ledger or Ledger(settings.resolved_ledger_url)
    pacs = pacs or PacsClient(
        settings.dicomweb_url, settings.orthanc_user, settings.orthanc_password.get_secret_value(),
        timeout=settings.http_timeout_seconds,
    )
    reconciler = Reconciler(settings, ledger, pacs)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
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
    bearer = HTTPBearer(auto_error=False)
    token = settings.sidecar_token.get_secret_value().encode()

    def authorized(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

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

    @app.post("/v1/jobs", status_code=202, response_model=JobView, tags=["jobs"], dependencies=[Depends(authorized)])
    def create_job(request: JobRequest) -> JobView:
        """Queue a study (idempotent: one job per study and pipeline version)."""
        job, created = ledger.enqueue(
            request.study_uid,
            settings.pipeline_version,
            trigger=request.trigger,
            rerun=request.rerun,
            max_attempts=settings.max_attempts,
            fingerprint=request.source_fingerprint,
        )
        LOG.info("job %d for study %s: %s (%s)", job.id, short_hash(request.study_uid),
                 "created" if created else "exists", job.state.value)
        return _view(job)

    @app.get("/v1/jobs", response_model=list[JobView], tags=["jobs"], dependencies=[Depends(authorized)])
    def list_jobs(
        state: Optional[JobState] = None,
        study_uid: Optional[str] = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> list[JobView]:
        """Jobs, newest first; filter by state or study."""
        if study_uid is not None:
            try:
                valid_uid(study_uid)
            except ValueError as exc:
                raise HTTPException(422, f"study_uid {exc}") from exc
            found = ledger.find(study_uid)
            if state is not None:
                found = [j for j in found if j.state == state]
            return [_view(j) for j in found[offset: offset + limit]]
        return [_view(j) for j in ledger.list(state=state, limit=limit, offset=offset)]

    @app.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], dependencies=[Depends(authorized)])
    def get_job(job_id: int) -> JobView:
        job = ledger.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return _view(job)


    add_result_routes(app, authorized)
    return app
