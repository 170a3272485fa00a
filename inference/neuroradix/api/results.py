"""Result routes of the API: the one-call results zip, and analysis of an uploaded study."""
from __future__ import annotations

import io
import logging
from typing import Callable, Optional

import highdicom as hd
import numpy as np
import pydicom
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from neuroradix.analyzers.registry import build_analyzers
from neuroradix.errors import BadInputError, NotConfiguredError, NotEligibleError
from neuroradix.jobs.ledger import JobState
from neuroradix.offline import (
    ArchiveGroup,
    analyze_datasets,
    archive_entries,
    groups_from_outcome,
    read_zip,
    volume_nifti,
    zip_bytes,
)
from neuroradix.uids import short_hash, valid_uid
from neuroradix.writers.summary import results_document

LOG = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"


def seg_label_map(seg: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild a label map (and its affine) from a stored SEG, on the SEG's own frame grid."""

    segmentation = hd.seg.Segmentation.from_dataset(seg)
    volume = segmentation.get_volume(combine_segments=True, relabel=False)
    return np.asarray(volume.array), np.asarray(volume.affine)


def _zip_response(data: bytes, filename: str) -> Response:
    return Response(
        content=data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def add_result_routes(app: FastAPI, authorized: Callable) -> None:
    settings, ledger, pacs = app.state.settings, app.state.ledger, app.state.pacs
    analyzers_cache: dict = {}

    def _jobs(study_uid: str) -> list:
        """The study's jobs for the current pipeline version, newest first (422 for a bad UID)."""
        try:
            valid_uid(study_uid)
        except ValueError as exc:
            raise HTTPException(422, f"study_uid {exc}") from exc
        return ledger.find(study_uid, settings.pipeline_version)

    @app.get(
        "/v1/studies/{study_uid}/results.zip",
        tags=["results"],
        dependencies=[Depends(authorized)],
        responses={200: {"content": {"application/zip": {}}}, 404: {"description": "no results (job state given)"}},
    )
    def results_zip(study_uid: str) -> Response:
        """SEG, SR, Parametric Maps and PDF as ``.dcm``, ``results.json`` and the label map as NIfTI."""
        jobs = _jobs(study_uid)
        if not jobs or jobs[0].state != JobState.SUCCEEDED:
            state = jobs[0].state.value if jobs else None
            reason = jobs[0].error_message if jobs else "no job for this study and pipeline version"
            return JSONResponse(
                status_code=404,
                content={"detail": "no results for this study", "job_state": state, "reason": reason},
            )
        job = jobs[0]
        groups: dict[str, list] = {}
        for record in job.output_uids:
            ds = pacs.retrieve_instance(study_uid, record["series_instance_uid"], record["sop_instance_uid"])
            groups.setdefault(record["analyzer"], []).append(ds)
        archive_groups = []
        for analyzer, datasets in groups.items():
            segs = [ds for ds in datasets if str(ds.SOPClassUID) in (SEG_STORAGE, LABELMAP_SEG_STORAGE)]
            nifti: Optional[bytes] = None
            if segs:
                labels, affine = seg_label_map(segs[0])
                nifti = volume_nifti(labels, affine)
            archive_groups.append(ArchiveGroup(analyzer, datasets, nifti))
        first = next(iter(groups.values()))[0]
        document = results_document(
            first,
            job.pipeline_version,
            job.input_series_uid or "",
            job.details.get("results", {}),
            job.output_uids,
            warnings=job.details.get("warnings", []),
            analyzer_status=job.details.get("analyzers", {}),
        )
        LOG.info("results zip for study %s", short_hash(study_uid))
        return _zip_response(zip_bytes(archive_entries(archive_groups, document)), "results.zip")

    def _report_attention(study_uid: str) -> tuple[str, dict]:
        jobs = _jobs(study_uid)
        if not jobs or jobs[0].state != JobState.SUCCEEDED:
            raise HTTPException(404, "no results for this study")
        attention = jobs[0].details.get("report_attention", {})
        if not attention:
            raise HTTPException(404, "no report attention: the deep-learning analyzer did not run on this study")
        return next(iter(attention.items()))

    @app.get("/v1/studies/{study_uid}/report-attention", tags=["results"], dependencies=[Depends(authorized)])
    def report_attention(study_uid: str) -> dict:
        """Per report token: its attention over the patches (BART cross-attention composed with the
        bridge's gen-query attention), with each patch's centre in patient coordinates (LPS, mm)."""
        analyzer, data = _report_attention(study_uid)
        from neuroradix.models.sliding import PatchGrid  # noqa: PLC0415 - optional heavy dependency (torch etc.)

        grid = PatchGrid.from_dict(data["patch_grid"])
        return {
            "analyzer": analyzer,
            "patch_centres_lps": np.round(grid.centres_lps(), 2).tolist(),
            "tokens": [{"index": i, "token": t["token"], "patch_attention": t["patch_attention"]}
                       for i, t in enumerate(data["tokens"])],
        }

    @app.get(
        "/v1/studies/{study_uid}/report-attention/{index}.nii.gz",
        tags=["results"],
        dependencies=[Depends(authorized)],
        responses={200: {"content": {"application/gzip": {}}}},
    )
    def report_token_map(study_uid: str, index: int) -> Response:
        """One report token's attention map on the attention grid, as NIfTI (RAS)."""
        _analyzer, data = _report_attention(study_uid)
        if not 0 <= index < len(data["tokens"]):
            raise HTTPException(404, f"token index {index} outside 0..{len(data['tokens']) - 1}")
        from neuroradix.models.sliding import PatchGrid  # noqa: PLC0415 - optional heavy dependency (torch etc.)

        grid = PatchGrid.from_dict(data["patch_grid"])
        geo = data["attention_grid"]
        weights = np.asarray(data["tokens"][index]["patch_attention"], dtype=np.float64) * len(grid)
        array = grid.stitch(weights, tuple(geo["shape"]), np.asarray(geo["affine"]))
        return Response(content=volume_nifti(array, np.asarray(geo["affine"])), media_type="application/gzip")

    @app.post(
        "/v1/analyze",
        tags=["results"],
        dependencies=[Depends(authorized)],
        openapi_extra={"requestBody": {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}, "required": True}},
        responses={200: {"content": {"application/zip": {}}}, 413: {"description": "upload too large"}},
    )
    async def analyze_upload(request: Request) -> Response:
        """Analyze a zip of one DICOM study without a PACS; returns the results zip."""
        if request.headers.get("content-type", "").split(";")[0].strip() not in ("application/zip", "application/octet-stream"):
            raise HTTPException(415, "send the study as a zip with Content-Type: application/zip")
        limit = settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"upload of {declared} bytes exceeds the limit of {limit}")
        body = io.BytesIO()
        async for chunk in request.stream():
            body.write(chunk)
            if body.tell() > limit:
                raise HTTPException(413, f"upload exceeds the limit of {limit} bytes")
        if body.tell() == 0:
            raise HTTPException(400, "empty upload: send a zip of one DICOM study")

        def work() -> bytes:
            if "analyzers" not in analyzers_cache:
                analyzers_cache["analyzers"] = build_analyzers(settings)
            datasets = read_zip(body.getvalue(), limit)
            outcome = analyze_datasets(datasets, settings, analyzers_cache["analyzers"])
            return zip_bytes(archive_entries(groups_from_outcome(outcome), outcome.document))

        try:
            data = await run_in_threadpool(work)
        except (BadInputError, NotEligibleError) as exc:
            raise HTTPException(422, f"{type(exc).__name__}: {exc}") from exc
        except NotConfiguredError as exc:
            raise HTTPException(503, f"{type(exc).__name__}: {exc}") from exc
        return _zip_response(data, "results.zip")
