"""Where the triage level shows in the PACS: one Orthanc study label and the decision in study metadata.

Orthanc 1.12.0 and later index study **labels** (``PUT /studies/{id}/labels/{label}``) and filter
on them (``POST /tools/find`` with ``"Labels"``); the node keeps exactly one of its ``ai-*`` labels on
a study. Every Orthanc keeps the decision (level, reasons, policy version, decision time) as JSON
in the study's user metadata ``NeuroRadixTriage`` (declared in ``orthanc.json``'s
``UserMetadata``); on an Orthanc without labels that metadata is the only flag, and the node says
so at start.

Orthanc's REST API, through the sidecar's account: the plugin allows it ``POST /tools/lookup``,
``GET /system``, and on studies only ``PUT``/``DELETE`` of ``ai-*`` labels and ``PUT`` of this
metadata (``plugin/policy.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import requests

from neuroradix.errors import NotEligibleError
from neuroradix.pacs.dicomweb import mapped_errors
from neuroradix.pacs.orthanc_info import parse_version

logger = logging.getLogger(__name__)

TRIAGE_METADATA = "NeuroRadixTriage"  # user metadata name (orthanc.json "UserMetadata")
LABELS_SINCE = (1, 12, 0)  # the first Orthanc with study labels


@dataclass(frozen=True)
class PatientInfo:
    """The DICOM patient module and accession of a study, as the RIS messages need them."""

    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""


class StudyFlags:
    """Puts the triage label and metadata on a study in Orthanc, and reads what a notice needs.

    Parameters
    ----------
    orthanc_url
        Orthanc's REST root (``http://127.0.0.1:8042``).
    user, password
        The sidecar's account.
    timeout
        Seconds per request.
    """

    def __init__(self, orthanc_url: str, user: str, password: str, timeout: float = 30.0) -> None:
        self.root = orthanc_url.rstrip("/")
        self._session = requests.Session()
        self._session.auth = (user, password)
        self._timeout = timeout
        self._labels: Optional[bool] = None

    def system(self) -> dict:
        """Orthanc's ``/system`` answer (version, database and plugin facts)."""
        with mapped_errors("Orthanc /system"):
            answer = self._session.get(f"{self.root}/system", timeout=self._timeout)
            answer.raise_for_status()
        return answer.json()

    def has_labels(self) -> bool:
        """Whether this Orthanc has study labels (asked once, then remembered)."""
        if self._labels is None:
            info = self.system()
            self._labels = bool(info.get("HasLabels", parse_version(info.get("Version", "0")) >= LABELS_SINCE))
            if not self._labels:
                logger.warning(
                    "Orthanc %s has no study labels (1.12.0+): the triage level is kept in study metadata %s only",
                    info.get("Version"),
                    TRIAGE_METADATA,
                )
        return self._labels

    def study_id(self, study_uid: str) -> str:
        """Orthanc's identifier of the study; :class:`NotEligibleError` when the PACS does not have it."""
        with mapped_errors("study lookup"):
            found = self._session.post(f"{self.root}/tools/lookup", data=study_uid, timeout=self._timeout)
            found.raise_for_status()
        ids = [item["ID"] for item in found.json() if item.get("Type") == "Study"]
        if not ids:
            raise NotEligibleError("study lookup: the study is not in the PACS")
        return ids[0]

    def apply(self, study_uid: str, label: str, all_labels: Sequence[str], decision: dict) -> str:
        """Make ``label`` the study's only node label and store the decision; returns ``"label"`` or ``"metadata"``.

        The new label is put first and the others removed after, so that the study is never
        without a label in between (a list filtered by label never loses it).
        """
        orthanc_id = self.study_id(study_uid)
        study = f"{self.root}/studies/{orthanc_id}"
        with mapped_errors("triage metadata"):
            self._session.put(
                f"{study}/metadata/{TRIAGE_METADATA}",
                data=json.dumps(decision, sort_keys=True).encode(),
                timeout=self._timeout,
            ).raise_for_status()
        if not self.has_labels():
            return "metadata"
        with mapped_errors("triage label"):
            self._session.put(f"{study}/labels/{label}", data=b"", timeout=self._timeout).raise_for_status()
            current = self._session.get(f"{study}/labels", timeout=self._timeout)
            current.raise_for_status()
            for other in current.json():
                if other in all_labels and other != label:
                    self._session.delete(f"{study}/labels/{other}", timeout=self._timeout).raise_for_status()
        return "label"

    def labels(self, study_uid: str) -> list[str]:
        """The study's labels (for checks and tests)."""
        orthanc_id = self.study_id(study_uid)
        with mapped_errors("study labels"):
            answer = self._session.get(f"{self.root}/studies/{orthanc_id}/labels", timeout=self._timeout)
            answer.raise_for_status()
        return list(answer.json())

    def patient_info(self, study_uid: str) -> PatientInfo:
        """The study's patient module and accession number, read over QIDO-RS."""
        fields = ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber"]
        with mapped_errors("QIDO study"):
            answer = self._session.get(
                f"{self.root}/dicom-web/studies",
                params={"StudyInstanceUID": study_uid, "includefield": ",".join(fields)},
                headers={"Accept": "application/dicom+json"},
                timeout=self._timeout,
            )
            answer.raise_for_status()
        found = answer.json() if answer.content else []
        if not found:
            raise NotEligibleError("QIDO study: the study is not in the PACS")
        item = found[0]

        def value(tag: str) -> str:
            values = item.get(tag, {}).get("Value") or [""]
            first = values[0]
            if isinstance(first, dict):  # a person name: {"Alphabetic": "..."}
                return str(first.get("Alphabetic", ""))
            return str(first)

        return PatientInfo(
            patient_id=value("00100020"),
            patient_name=value("00100010"),
            birth_date=value("00100030"),
            sex=value("00100040"),
            accession_number=value("00080050"),
        )
