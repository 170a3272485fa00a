"""Job routes: queue a study, list and read jobs."""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field, field_validator

from neuroradix.api.deps import get_ledger, get_settings
from neuroradix.config import Settings
from neuroradix.jobs.ledger import Job, JobState, Ledger
from neuroradix.uids import short_hash, valid_uid

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])


class JobRequest(BaseModel):
    """Ask for a study to be processed (the plugin does this on STABLE_STUDY)."""

    study_uid: str = Field(description="StudyInstanceUID of a study stored in the node's Orthanc")
    rerun: bool = Field(False, description="Queue again even if a job for this study already ended")
    trigger: str = Field("api", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    source_fingerprint: Optional[str] = Field(
        None,
        pattern=r"^[0-9a-f]{8,64}$",
        description="Hash of the study's source series and instance counts (sent by the plugin); "
        "a finished job whose study changed since is queued again",
    )

    @field_validator("study_uid")
    @classmethod
    def _uid(cls, value: str) -> str:
        return valid_uid(value)


class JobView(BaseModel):
    """A job as the API shows it (``source``: ``pacs`` or ``upload``)."""

    id: int
    study_uid: str
    pipeline_version: str
    state: str
    trigger: str
    source: str
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


def job_view(job: Job) -> JobView:
    """The API's view of a ledger job."""
    data = job.to_dict()
    return JobView(**{k: data[k] for k in JobView.model_fields})


def checked_uid(study_uid: str) -> str:
    """``study_uid`` if it is a valid UID.

    Raises
    ------
    HTTPException
        422 naming what is wrong.
    """
    try:
        return valid_uid(study_uid)
    except ValueError as exc:
        raise HTTPException(422, f"study_uid {exc}") from exc


@router.post("/v1/jobs", status_code=202, response_model=JobView)
def create_job(
    request: JobRequest, settings: Settings = Depends(get_settings), ledger: Ledger = Depends(get_ledger)
) -> JobView:
    """Queue a study (idempotent: one job per study and pipeline version)."""
    job, created = ledger.enqueue(
        request.study_uid,
        settings.pipeline_version,
        trigger=request.trigger,
        rerun=request.rerun,
        max_attempts=settings.max_attempts,
        fingerprint=request.source_fingerprint,
    )
    logger.info(
        "job %d for study %s: %s (%s)",
        job.id,
        short_hash(request.study_uid),
        "created" if created else "exists",
        job.state.value,
    )
    return job_view(job)


@router.get("/v1/jobs", response_model=list[JobView])
def list_jobs(
    state: Optional[JobState] = None,
    study_uid: Optional[str] = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    ledger: Ledger = Depends(get_ledger),
) -> list[JobView]:
    """Jobs, newest first; filter by state or study."""
    if study_uid is not None:
        found = ledger.find(checked_uid(study_uid))
        if state is not None:
            found = [j for j in found if j.state == state]
        return [job_view(j) for j in found[offset : offset + limit]]
    return [job_view(j) for j in ledger.list(state=state, limit=limit, offset=offset)]


@router.get("/v1/jobs/{job_id}", response_model=JobView)
def get_job(job_id: int, ledger: Ledger = Depends(get_ledger)) -> JobView:
    """One job (404 when there is none)."""
    job = ledger.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job_view(job)
