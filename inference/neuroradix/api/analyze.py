"""``POST /v1/analyze``: analyze an uploaded zip of one study through the node's own job machinery.

The upload is streamed to a file under the node's var directory (chunk by chunk: never held in
memory whole, let alone twice), checked (:func:`~neuroradix.pipeline.sources.inspect_zip`: a zip of safe,
readable members, DICOM headers, one study; 422 with the reason otherwise, 413 past a size limit)
and queued as a job whose input is that file
(``source="upload"``). A worker process runs it like any job and keeps its results in the job's
folder; the client follows the job (``GET /v1/jobs/{id}``) and fetches ``GET /v1/jobs/{id}/results.zip``.

At most ``max_concurrent_uploads`` uploads are received and checked at once by one API process;
one more is answered 429 with ``Retry-After`` before its body is read.

``?wait=SECONDS`` is the synchronous convenience: the route waits up to that long for the job to
end and then answers with the results zip itself (200), the failure (422, with the job), or the
job still running (202), so ``curl --data-binary @study.zip -o results.zip ".../v1/analyze?wait=600"``
still gives a results zip in one call.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from neuroradix.api.deps import get_ledger, get_pacs, get_settings
from neuroradix.api.jobs import job_view
from neuroradix.api.results import results_archive, zip_response
from neuroradix.config import Settings
from neuroradix.errors import BadInputError, InputTooLargeError
from neuroradix.jobs.ledger import UPLOAD, Job, JobState, Ledger
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pipeline.layout import uploads_dir
from neuroradix.pipeline.sources import ZipInventory, inspect_zip
from neuroradix.uids import short_hash

logger = logging.getLogger(__name__)

router = APIRouter(tags=["results"])

ZIP_TYPES = ("application/zip", "application/octet-stream")
POLL_SECONDS = 0.25
RETRY_AFTER_SECONDS = 10


class UploadSlots:
    """How many uploads one API process receives at once (one event loop: no lock is needed)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.busy = limit, 0

    def take(self) -> None:
        """Take a slot, or raise 429 with ``Retry-After``."""
        if self.busy >= self.limit:
            raise HTTPException(
                429,
                f"{self.busy} uploads are being received, the limit (max_concurrent_uploads) is {self.limit}: "
                f"try again in {RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.busy += 1

    def give_back(self) -> None:
        """Free a slot taken by :meth:`take`."""
        self.busy = max(0, self.busy - 1)


def upload_slots(request: Request, settings: Settings) -> UploadSlots:
    """The application's :class:`UploadSlots` (made on first use)."""
    slots = getattr(request.app.state, "upload_slots", None)
    if slots is None:
        slots = request.app.state.upload_slots = UploadSlots(settings.max_concurrent_uploads)
    return slots


async def _receive(request: Request, path: Path, limit: int) -> int:
    """Stream the request body into ``path``; returns its size (413 past ``limit``, 400 when empty)."""
    size = 0
    try:
        with path.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"upload exceeds the limit of {limit} bytes")
                out.write(chunk)
        if size == 0:
            raise HTTPException(400, "empty upload: send a zip of one DICOM study")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return size


async def _accept(request: Request, settings: Settings, ledger: Ledger, limit: int) -> tuple[Job, ZipInventory]:
    """Receive, check and queue one upload; returns its job and what the zip holds."""
    folder = uploads_dir(settings.var_dir)
    folder.mkdir(parents=True, exist_ok=True)
    upload_id = uuid.uuid4().hex
    partial = folder / f"{upload_id}.partial"
    await _receive(request, partial, limit)
    try:
        inventory = await run_in_threadpool(
            lambda: inspect_zip(partial, settings.max_upload_expanded_bytes, max_ratio=settings.max_zip_member_ratio)
        )
    except BadInputError as exc:
        partial.unlink(missing_ok=True)
        status = 413 if isinstance(exc, InputTooLargeError) else 422
        raise HTTPException(status, f"{type(exc).__name__}: {exc}") from exc
    path = partial.rename(folder / f"{upload_id}.zip")
    job, _ = await run_in_threadpool(
        lambda: ledger.enqueue(
            inventory.study_uid,
            upload_pipeline_version(settings, upload_id),
            trigger="upload",
            max_attempts=settings.max_attempts,
            source=UPLOAD,
            input_path=str(path.resolve()),
        )
    )
    return job, inventory


def upload_pipeline_version(settings: Settings, upload_id: str) -> str:
    """The ledger key's version part for an upload: each upload is its own job, apart from PACS jobs."""
    return f"{settings.pipeline_version}+upload-{upload_id}"


@router.post(
    "/v1/analyze",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            "required": True,
        }
    },
    responses={
        200: {"content": {"application/zip": {}}, "description": "with ?wait: the job ended; its results zip"},
        202: {"description": "the job (queued, or still running when ?wait ran out)"},
        413: {"description": "upload too large, or it expands too much (total size, a member's ratio)"},
        415: {"description": "not sent as application/zip"},
        422: {"description": "not a usable zip of one study (the reason is named), or (with ?wait) the job failed"},
        429: {"description": "too many uploads at once; try again after Retry-After seconds"},
    },
)
async def analyze_upload(
    request: Request,
    wait: float = Query(0.0, ge=0.0, le=3600.0, description="seconds to wait for the job to end (0: do not wait)"),
    settings: Settings = Depends(get_settings),
    ledger: Ledger = Depends(get_ledger),
    pacs: PacsClient = Depends(get_pacs),
) -> Response:
    """Queue an uploaded zip of one DICOM study for analysis; returns the job (or, with ``wait``, its results zip)."""
    if request.headers.get("content-type", "").split(";")[0].strip() not in ZIP_TYPES:
        raise HTTPException(415, "send the study as a zip with Content-Type: application/zip")
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload of {declared} bytes exceeds the limit of {limit}")
    slots = upload_slots(request, settings)
    slots.take()
    try:
        job, inventory = await _accept(request, settings, ledger, limit)
    finally:
        slots.give_back()
    logger.info("upload of study %s (%d files): job %d", short_hash(inventory.study_uid), inventory.n_files, job.id)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    deadline = time.monotonic() + wait
    while wait > 0 and not job.state.terminal and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        found = await run_in_threadpool(ledger.get, job.id)
        if found is None:
            raise HTTPException(404, f"job {job.id} disappeared from the ledger")
        job = found
    if job.state == JobState.SUCCEEDED:
        data = await run_in_threadpool(results_archive, job, settings, pacs)
        if data is not None:
            return zip_response(data)
    view = job_view(job).model_dump()
    if job.state.terminal:
        return JSONResponse(
            status_code=422, content={"detail": f"{job.error_class}: {job.error_message}", "job": view}, headers=headers
        )
    return JSONResponse(status_code=202, content=view, headers=headers)
