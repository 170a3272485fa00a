"""The worker's DICOMweb edge: QIDO search, WADO-RS fetch, STOW-RS store.

Wraps ``dicomweb_client`` with basic auth, explicit media types and error mapping:
connection problems and 5xx become :class:`TransientError` (the job is retried), refused
credentials (401/403) :class:`PacsAuthError` (retried too: the operator fixes them), a missing
study becomes :class:`NotEligibleError`, anything else the PACS refuses becomes
:class:`BadInputError`.

Facts about Orthanc that shape this module (see DESIGN.md): only UID/date/modality filters are
used (Orthanc 1.10.1 did not URL-decode query strings; 1.12.11+, the node's minimum, does:
tests/integration/test_orthanc_current.py); frame retrieval with the client's default
Accept fails, so instances are requested as ``application/dicom`` with ``transfer-syntax=*``
(stored as received, JPEG 2000 decoded locally by pylibjpeg-openjpeg), with a fallback to
Orthanc transcoding to Explicit VR Little Endian where the local decoder fails.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from neuroradix.errors import BadInputError, NotEligibleError, PacsAuthError, PartialStoreError, TransientError
from neuroradix.pacs.summaries import InstanceSummary, SeriesSummary, StudySummary

logger = logging.getLogger(__name__)

AS_STORED = (("application/dicom", "*"),)
EXPLICIT_LITTLE = (("application/dicom", "1.2.840.10008.1.2.1"),)


@contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Turn an HTTP failure of a PACS request into the node's error classes (what the worker retries or fails)."""
    try:
        yield
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 404:
            raise NotEligibleError(f"{what}: not found in the PACS (HTTP 404)") from exc
        if status in (401, 403):  # a rotated password or a missing permission: the node's fault, not the study's
            raise PacsAuthError(f"{what}: PACS refused the sidecar's credentials (HTTP {status})") from exc
        if status >= 500 or status in (408, 429):
            raise TransientError(f"{what}: PACS answered HTTP {status}") from exc
        raise BadInputError(f"{what}: PACS refused the request (HTTP {status})") from exc
    except (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,  # a stream cut mid-fetch
    ) as exc:
        raise TransientError(f"{what}: PACS not reachable ({exc.__class__.__name__})") from exc


def complete_file_meta(ds: pydicom.Dataset) -> None:
    """Give ``ds`` the File Meta Information a stored DICOM file must have.

    Orthanc stores a STOW-RS part as sent: without FileMetaInformationVersion and
    ImplementationClassUID the copy in the PACS fails ``dciodvfy`` although the local file passes.
    """
    ds.ensure_file_meta()
    meta = ds.file_meta
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    validate_file_meta(meta, enforce_standard=True)
    write_file_meta_info(DicomBytesIO(), meta, enforce_standard=True)  # sets FileMetaInformationGroupLength


def _stow_conflict(exc: requests.exceptions.HTTPError) -> Optional[pydicom.Dataset]:
    """The STOW-RS response of a 409 that lists refused objects (``FailedSOPSequence``), else None.

    A STOW-RS origin server answers 409 when some or all objects failed, with the same response
    dataset as a success; Orthanc does so for a partial store too.
    """
    response = exc.response
    if response is None or response.status_code != 409:
        return None
    try:
        dataset = pydicom.Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None
    return dataset if "FailedSOPSequence" in dataset else None


def _failure_reason(item: pydicom.Dataset) -> str:
    value = getattr(item, "FailureReason", None)
    return f"0x{int(value):04X}" if isinstance(value, int) else "?"


class PacsClient:
    """DICOMweb access to one PACS (Orthanc's ``/dicom-web``).

    Searches return typed summaries (:mod:`neuroradix.pacs.summaries`); retrievals return datasets.

    Parameters
    ----------
    dicomweb_url:
        Root of the DICOMweb service, e.g. ``http://127.0.0.1:8042/dicom-web``.
    user, password:
        HTTP basic-auth credentials.
    timeout:
        Seconds per HTTP request.
    """

    def __init__(self, dicomweb_url: str, user: str, password: str, timeout: float = 120.0) -> None:
        session = requests.Session()
        session.auth = (user, password)
        self.url = dicomweb_url
        self._session = session
        self._timeout = timeout
        self._client = DICOMwebClient(url=dicomweb_url, session=session, timeout=timeout)
        # dicomweb_client retries every failed request 5 times over ~30 s by default (any exception,
        # 429/408/503/504). The worker's retry policy (neuroradix.jobs.retry) is the one that
        # counts; here only a blip is ridden out: 3 tries, 0.5 s and 1 s apart.
        self._client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)

    # --- QIDO -----------------------------------------------------------------------------
    def search_studies(
        self, *, modality: Optional[str] = None, limit: int = 100, offset: int = 0
    ) -> list[StudySummary]:
        """QIDO-RS study search, one page.

        Parameters
        ----------
        modality:
            Only studies with this modality (``ModalitiesInStudy``); all studies when ``None``.
        limit, offset:
            The page.

        Returns
        -------
        list[StudySummary]
            The studies of the page (fewer than ``limit`` on the last page).
        """
        filters = {"ModalitiesInStudy": modality} if modality else None
        with mapped_errors("QIDO studies"):
            found = self._client.search_for_studies(
                limit=limit, offset=offset, search_filters=filters, fields=["StudyInstanceUID", "ModalitiesInStudy"]
            )
        return [StudySummary.from_json(item) for item in found]

    def search_series(self, study_uid: str) -> list[SeriesSummary]:
        """QIDO-RS series search within one study.

        Returns
        -------
        list[SeriesSummary]
            Every series of the study, the node's own result series included.
        """
        with mapped_errors("QIDO series"):
            found = self._client.search_for_series(
                study_instance_uid=study_uid,
                fields=["Manufacturer", "SeriesDescription", "NumberOfSeriesRelatedInstances", "SOPClassUID"],
            )
        return [SeriesSummary.from_json(item) for item in found]

    def series_metadata(self, study_uid: str, series_uid: str) -> list[InstanceSummary]:
        """WADO-RS metadata of a series' instances (no pixel data), for series selection."""
        with mapped_errors("WADO-RS metadata"):
            found = self._client.retrieve_series_metadata(study_uid, series_uid)
        return [InstanceSummary.from_json(item) for item in found]

    # --- WADO-RS ---------------------------------------------------------------------------
    def retrieve_series(self, study_uid: str, series_uid: str, *, transcode: bool = False) -> list[pydicom.Dataset]:
        """All instances of a series.

        Parameters
        ----------
        transcode:
            False: as stored (``transfer-syntax=*``); True: transcoded by the PACS to Explicit VR
            Little Endian, for pixel data this process cannot decode.
        """
        with mapped_errors("WADO-RS series"):  # streamed: the response body is never held whole next to the datasets
            return list(
                self._client.iter_series(study_uid, series_uid, media_types=EXPLICIT_LITTLE if transcode else AS_STORED)
            )

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> pydicom.Dataset:
        """One instance, as stored."""
        with mapped_errors("WADO-RS instance"):
            return self._client.retrieve_instance(study_uid, series_uid, sop_uid, media_types=AS_STORED)

    # --- STOW-RS ---------------------------------------------------------------------------
    def store(self, datasets: Sequence[pydicom.Dataset], study_uid: str) -> None:
        """STOW-RS the datasets into ``study_uid``.

        Raises
        ------
        PartialStoreError
            When the PACS stored only some of them (``FailedSOPSequence``, failure reasons named):
            the series of these datasets are deleted again (best effort), and the job's retry
            stores them anew.
        BadInputError
            When the PACS refuses the request as a whole (HTTP 4xx other than 401/403/404).
        TransientError
            When the PACS is unreachable or answers 5xx.
        """
        if not datasets:
            return
        for ds in datasets:  # STOW-RS parts are DICOM files: preamble + "DICM" + a complete meta header
            if getattr(ds, "preamble", None) is None:
                ds.preamble = b"\x00" * 128
            complete_file_meta(ds)
        response: Optional[pydicom.Dataset]
        with mapped_errors("STOW-RS"):
            try:
                response = self._client.store_instances(list(datasets), study_instance_uid=study_uid)
            except requests.exceptions.HTTPError as exc:
                response = _stow_conflict(exc)  # Orthanc answers 409 as soon as one object fails
                if response is None:
                    raise
        failed = getattr(response, "FailedSOPSequence", None)
        if failed:
            stored = len(getattr(response, "ReferencedSOPSequence", None) or [])
            reasons = sorted({_failure_reason(item) for item in failed})
            self._discard_partial(sorted({str(ds.SeriesInstanceUID) for ds in datasets}))
            raise PartialStoreError(
                f"STOW-RS: the PACS stored only {stored} of {len(datasets)} object(s), failure reasons {reasons}"
            )

    def _discard_partial(self, series_uids: Sequence[str]) -> None:
        """Delete what a partial STOW left of the node's series; a failure is logged (the retry deletes them)."""
        for series_uid in series_uids:
            try:
                self.delete_series(series_uid)
            except (TransientError, BadInputError, NotEligibleError) as exc:
                logger.warning("partial STOW: could not delete a stored series again (%s); the retry replaces it", exc)

    def delete_series(self, series_uid: str) -> bool:
        """Delete one series of the node's own output before it is stored again (a rerun).

        The PACS keeps the first copy of a SOP Instance UID (``OverwriteInstances`` is off, so no
        one can replace the node's results); a rerun therefore removes its own earlier series
        first, through Orthanc's REST API with the sidecar's account, which the plugin allows only
        for series the node made. If the node dies between the delete and the store, the job's
        lease expires and the job runs again, storing the series anew.

        Returns
        -------
        bool
            True when a series was found and deleted.
        """
        root = self.url.rsplit("/dicom-web", 1)[0]
        with mapped_errors("series lookup"):
            found = self._session.post(f"{root}/tools/lookup", data=series_uid, timeout=self._timeout)
            found.raise_for_status()
        ids = [item["ID"] for item in found.json() if item.get("Type") == "Series"]
        for orthanc_id in ids:
            with mapped_errors("series delete"):
                self._session.delete(f"{root}/series/{orthanc_id}", timeout=self._timeout).raise_for_status()
        return bool(ids)

    def ping(self) -> None:
        """Raise :class:`TransientError` if the PACS does not answer."""
        with mapped_errors("QIDO ping"):
            self._client.search_for_studies(limit=1)
