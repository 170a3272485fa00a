"""The worker's DICOMweb edge: QIDO search, WADO-RS fetch, STOW-RS store.

Wraps ``dicomweb_client`` with basic auth, explicit media types and error mapping:
connection problems and 5xx become :class:`TransientError` (the job is retried), a missing
study becomes :class:`NotEligibleError`, anything else the PACS refuses becomes
:class:`BadInputError`.

Facts about Orthanc 1.10.1 that shape this module (see DESIGN.md): it does not URL-decode query
strings, so only UID/date/modality filters are used; frame retrieval with the client's default
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

from neuroradix.errors import BadInputError, NotEligibleError, TransientError

LOG = logging.getLogger(__name__)

AS_STORED = (("application/dicom", "*"),)
EXPLICIT_LITTLE = (("application/dicom", "1.2.840.10008.1.2.1"),)


@contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    try:
        yield
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 404:
            raise NotEligibleError(f"{what}: not found in the PACS (HTTP 404)") from exc
        if status >= 500 or status in (408, 429):
            raise TransientError(f"{what}: PACS answered HTTP {status}") from exc
        raise BadInputError(f"{what}: PACS refused the request (HTTP {status})") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise TransientError(f"{what}: PACS not reachable ({exc.__class__.__name__})") from exc


class PacsClient:
    """DICOMweb access to one PACS (Orthanc's ``/dicom-web``)."""

    def __init__(self, dicomweb_url: str, user: str, password: str, timeout: float = 120.0) -> None:
        session = requests.Session()
        session.auth = (user, password)
        self.url = dicomweb_url
        self._client = DICOMwebClient(url=dicomweb_url, session=session, timeout=timeout)

    # --- QIDO -----------------------------------------------------------------------------
    def search_studies(self, *, modality: Optional[str] = None, limit: int = 100, offset: int = 0) -> list[dict]:
        filters = {"ModalitiesInStudy": modality} if modality else None
        with _mapped_errors("QIDO studies"):
            return self._client.search_for_studies(
                limit=limit, offset=offset, search_filters=filters, fields=["StudyInstanceUID", "ModalitiesInStudy"]
            )

    def search_series(self, study_uid: str) -> list[pydicom.Dataset]:
        with _mapped_errors("QIDO series"):
            found = self._client.search_for_series(
                study_instance_uid=study_uid,
                fields=["Manufacturer", "SeriesDescription", "NumberOfSeriesRelatedInstances", "SOPClassUID"],
            )
        return [pydicom.Dataset.from_json(item) for item in found]

    # --- WADO-RS ---------------------------------------------------------------------------
    def retrieve_series(self, study_uid: str, series_uid: str, *, transcode: bool = False) -> list[pydicom.Dataset]:
        """All instances of a series as stored (or transcoded to Explicit VR Little Endian)."""
        with _mapped_errors("WADO-RS series"):
            return self._client.retrieve_series(
                study_uid, series_uid, media_types=EXPLICIT_LITTLE if transcode else AS_STORED
            )

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> pydicom.Dataset:
        with _mapped_errors("WADO-RS instance"):
            return self._client.retrieve_instance(study_uid, series_uid, sop_uid, media_types=AS_STORED)

    # --- STOW-RS ---------------------------------------------------------------------------
    def store(self, datasets: Sequence[pydicom.Dataset], study_uid: str) -> None:
        if not datasets:
            return
        for ds in datasets:  # STOW-RS parts are DICOM files: preamble + "DICM" + meta header
            if getattr(ds, "preamble", None) is None:
                ds.preamble = b"\x00" * 128
        with _mapped_errors("STOW-RS"):
            response = self._client.store_instances(list(datasets), study_instance_uid=study_uid)
        failed = getattr(response, "FailedSOPSequence", None)
        if failed:
            reasons = sorted({str(getattr(item, "FailureReason", "?")) for item in failed})
            raise BadInputError(f"STOW-RS: the PACS refused {len(failed)} object(s), failure reasons {reasons}")

    def ping(self) -> None:
        """Raise :class:`TransientError` if the PACS does not answer."""
        with _mapped_errors("QIDO ping"):
            self._client.search_for_studies(limit=1)
