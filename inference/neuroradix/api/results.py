"""Result routes: a job's results zip, and where the generated report looked.

The zip is made from what the job recorded: the job's results folder (its layout is
:mod:`neuroradix.pipeline.layout`: ``results.json`` and each analyzer's ``labels.nii.gz``, plus
the DICOM objects of an uploaded study) and, for a PACS study, the objects the job stored, fetched
from the PACS as stored. Nothing is decoded or recomputed here;
report-token maps are rendered by the deep analyzer's own :func:`~neuroradix.analyzers.deep.report_token_map`.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse, Response

from neuroradix.api.deps import get_ledger, get_pacs, get_settings
from neuroradix.api.jobs import checked_uid
from neuroradix.config import Settings
from neuroradix.imaging.nifti import volume_to_nifti_bytes
from neuroradix.jobs.ledger import UPLOAD, Job, JobState, Ledger
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pipeline.layout import (
    ArchiveGroup,
    archive_entries,
    folder_entries,
    job_results_dir,
    read_document,
    read_labels,
    zip_bytes,
)
from neuroradix.types import ReportAttention
from neuroradix.uids import short_hash

logger = logging.getLogger(__name__)

router = APIRouter(tags=["results"])

ZIP_RESPONSES: dict = {
    200: {"content": {"application/zip": {}}},
    404: {"description": "no results (the job's state and reason are given)"},
}


def _no_results(job: Optional[Job], reason: Optional[str] = None) -> JSONResponse:
    return JSONResponse(
        status_code=404,
        content={
            "detail": "no results for this study",
            "job_id": job.id if job else None,
            "job_state": job.state.value if job else None,
            "reason": reason or (job.error_message if job else "no job for this study and pipeline version"),
        },
    )


def zip_response(data: bytes, filename: str = "results.zip") -> Response:
    """``data`` as a zip download."""
    return Response(
        content=data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def results_archive(job: Job, settings: Settings, pacs: PacsClient) -> Optional[bytes]:
    """The results zip of a succeeded job from what it recorded; ``None`` when its folder is missing.

    Parameters
    ----------
    job:
        A succeeded job.
    settings:
        Where the node's var directory is.
    pacs:
        Fetches a PACS job's stored objects (as stored; nothing is decoded).

    Returns
    -------
    bytes or None
        Per analyzer ``NN-<modality>.dcm`` and ``labels.nii.gz``, and ``results.json``.
    """
    folder = job_results_dir(settings.var_dir, job.id)
    document = read_document(folder)
    if document is None:
        return None
    if job.source == UPLOAD:  # the folder holds everything (no PACS has the objects)
        return zip_bytes(folder_entries(folder))
    datasets: dict[str, list] = {}
    for record in job.output_uids:
        ds = pacs.retrieve_instance(job.study_uid, record["series_instance_uid"], record["sop_instance_uid"])
        datasets.setdefault(record["analyzer"], []).append(ds)
    groups = [
        ArchiveGroup(analyzer, datasets.get(analyzer, []), read_labels(folder, analyzer))
        for analyzer in job.details.get("analyzers", {})
    ]
    return zip_bytes(archive_entries(groups, document))


def _zip_for(job: Optional[Job], settings: Settings, pacs: PacsClient) -> Response:
    if job is None or job.state != JobState.SUCCEEDED:
        return _no_results(job)
    data = results_archive(job, settings, pacs)
    if data is None:
        return _no_results(
            job,
            "the job's result files are not on this node (made before they were kept, or on a "
            "worker with another var directory): rerun the job",
        )
    logger.info("results zip for study %s (job %d)", short_hash(job.study_uid), job.id)
    return zip_response(data)


def _study_job(study_uid: str, settings: Settings, ledger: Ledger) -> Optional[Job]:
    """The study's job for the current pipeline version (422 for a bad UID)."""
    jobs = ledger.find(checked_uid(study_uid), settings.pipeline_version)
    return jobs[0] if jobs else None


@router.get("/v1/studies/{study_uid}/results.zip", responses=ZIP_RESPONSES)
def study_results_zip(
    study_uid: str,
    settings: Settings = Depends(get_settings),
    ledger: Ledger = Depends(get_ledger),
    pacs: PacsClient = Depends(get_pacs),
) -> Response:
    """SEG, SR, Parametric Maps and PDF as ``.dcm``, ``results.json`` and the label map as NIfTI."""
    return _zip_for(_study_job(study_uid, settings, ledger), settings, pacs)


@router.get("/v1/jobs/{job_id}/results.zip", responses=ZIP_RESPONSES)
def job_results_zip(
    job_id: int,
    settings: Settings = Depends(get_settings),
    ledger: Ledger = Depends(get_ledger),
    pacs: PacsClient = Depends(get_pacs),
) -> Response:
    """The results zip of one job (a PACS study's or an uploaded study's)."""
    return _zip_for(ledger.get(job_id), settings, pacs)


def _report_attention(study_uid: str, settings: Settings, ledger: Ledger) -> tuple[str, ReportAttention]:
    job = _study_job(study_uid, settings, ledger)
    if job is None or job.state != JobState.SUCCEEDED:
        raise HTTPException(404, "no results for this study")
    recorded = job.details.get("report_attention", {})
    if not recorded:
        raise HTTPException(404, "no report attention: the deep-learning analyzer did not run on this study")
    analyzer, data = next(iter(recorded.items()))
    return analyzer, ReportAttention.from_dict(data)


@router.get("/v1/studies/{study_uid}/report-attention")
def report_attention(
    study_uid: str, settings: Settings = Depends(get_settings), ledger: Ledger = Depends(get_ledger)
) -> dict:
    """Per report token: its attention over the patches (BART cross-attention composed with the
    bridge's gen-query attention), with each patch's centre in patient coordinates (LPS, mm)."""
    analyzer, attention = _report_attention(study_uid, settings, ledger)
    from neuroradix.analyzers.deep import (  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        report_patch_centres,
    )

    return {
        "analyzer": analyzer,
        "patch_centres_lps": np.round(report_patch_centres(attention), 2).tolist(),
        "tokens": [
            {"index": i, "token": t, "patch_attention": attention.patch_attention[i].tolist()}
            for i, t in enumerate(attention.tokens)
        ],
    }


@router.get(
    "/v1/studies/{study_uid}/report-attention/{index}.nii.gz", responses={200: {"content": {"application/gzip": {}}}}
)
def report_token_nifti(
    study_uid: str, index: int, settings: Settings = Depends(get_settings), ledger: Ledger = Depends(get_ledger)
) -> Response:
    """One report token's attention map on the attention grid, as NIfTI (RAS)."""
    _analyzer, attention = _report_attention(study_uid, settings, ledger)
    from neuroradix.analyzers.deep import (  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        report_token_map,
    )

    try:
        amap = report_token_map(attention, index)
    except IndexError as exc:
        raise HTTPException(404, str(exc)) from exc
    return Response(content=volume_to_nifti_bytes(amap.array, amap.affine), media_type="application/gzip")
