"""What the current Orthanc (1.12.11+, installed by ``make setup``) brings, on the real node.

Its version and plugins at start and in ``/readyz``; study labels put by the sidecar's account
and found with ``/tools/find`` (the triage worklist); QIDO-RS wildcards and person names, which
Orthanc 1.10.1 did not URL-decode; the REST port bound to loopback only (``HttpBindAddresses``,
1.12.10+); and the one 1.10.1 workaround that 1.13 still needs (the viewer proxy's
``transfer-syntax=*`` for JPEG 2000 SEG frames).
"""

from __future__ import annotations

import io
import socket
import uuid

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import JPEG2000Lossless

from neuroradix.pacs.orthanc_info import parse_version
from tests.factory import ct_series
from tests.harness import EphemeralNode
from tests.support import unavailable


def _session(node: EphemeralNode, role: str) -> requests.Session:
    session = requests.Session()
    session.auth = node.accounts()[role]
    return session


def _stored_study(node: EphemeralNode, shape=(3, 16, 16), **tags: str) -> tuple[str, list[pydicom.Dataset]]:
    """A small CT series in a new study; returns Orthanc's study id and the datasets."""
    datasets = ct_series(np.zeros(shape, np.int16), description="Chest " + uuid.uuid4().hex[:8])
    for ds in datasets:
        for key, value in tags.items():
            setattr(ds, key, value)
    node.upload(datasets)
    found = _session(node, "people").post(
        node.config.orthanc_url + "/tools/lookup", data=str(datasets[0].StudyInstanceUID), timeout=30
    )
    return [item["ID"] for item in found.json() if item["Type"] == "Study"][0], datasets


def test_the_node_runs_a_current_orthanc_and_readyz_names_it(node: EphemeralNode):
    info = node.orthanc.info
    assert info is not None and parse_version(info.version) >= (1, 12, 11) and info.has_labels
    assert {"python", "dicom-web", "gdcm"} <= set(info.plugins)
    ready = requests.get(node.config.sidecar_url + "/readyz", timeout=30).json()
    assert ready["checks"]["orthanc"] == "ok"
    assert ready["orthanc"]["version"] == info.version and ready["orthanc"]["plugins"] == dict(info.plugins)


def test_a_label_from_the_sidecar_is_found_with_tools_find(node: EphemeralNode):
    study_id, _ = _stored_study(node)
    orthanc = node.config.orthanc_url
    sidecar, viewer = _session(node, "sidecar"), _session(node, "viewer")
    query = {"Level": "Study", "Labels": ["ai-urgent"], "Query": {}}
    assert study_id not in viewer.post(orthanc + "/tools/find", json=query, timeout=30).json()
    assert sidecar.put(f"{orthanc}/studies/{study_id}/labels/ai-urgent", data=b"", timeout=30).status_code == 200
    assert sidecar.put(f"{orthanc}/studies/{study_id}/labels/teaching", data=b"", timeout=30).status_code == 403
    assert viewer.put(f"{orthanc}/studies/{study_id}/labels/ai-routine", data=b"", timeout=30).status_code == 403
    for reader in (viewer, sidecar):
        answer = reader.post(orthanc + "/tools/find", json=query, timeout=30)
        assert answer.status_code == 200 and study_id in answer.json()
    assert sidecar.get(f"{orthanc}/studies/{study_id}/labels", timeout=30).json() == ["ai-urgent"]
    assert sidecar.delete(f"{orthanc}/studies/{study_id}/labels/ai-urgent", timeout=30).status_code == 200
    assert study_id not in viewer.post(orthanc + "/tools/find", json=query, timeout=30).json()
    assert viewer.post(orthanc + "/tools/bulk-delete", json={"Resources": [study_id]}, timeout=30).status_code == 403


@pytest.mark.parametrize(
    "query",
    ["PatientName=Wildcard%5EAnna", "PatientName=Wildcard%2A", "PatientName=W%3Fldcard*", "PatientName=*card^Anna"],
)
def test_qido_decodes_wildcards_and_person_names(node: EphemeralNode, query):
    """Orthanc 1.10.1 did not URL-decode query strings: encoded ``*``, ``?`` or ``^`` found nothing."""
    if not getattr(test_qido_decodes_wildcards_and_person_names, "stored", False):
        _stored_study(node, PatientName="Wildcard^Anna", PatientID="QIDO-1")
        test_qido_decodes_wildcards_and_person_names.stored = True  # type: ignore[attr-defined]
    url = f"{node.config.orthanc_url}/dicom-web/studies?{query}&includefield=00100020"
    found = _session(node, "sidecar").get(url, headers={"Accept": "application/dicom+json"}, timeout=30).json()
    assert [item["00100020"]["Value"][0] for item in found] == ["QIDO-1"]


def _outward_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, only a route chosen
            address = probe.getsockname()[0]
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        unavailable("this host has no address besides loopback")
    return address


def test_the_rest_port_listens_on_loopback_only(node: EphemeralNode):
    address = _outward_address()
    with pytest.raises(OSError):
        socket.create_connection((address, node.config.orthanc_port), timeout=5).close()
    socket.create_connection(("127.0.0.1", node.config.orthanc_port), timeout=5).close()
    socket.create_connection((address, node.config.dicom_port), timeout=5).close()  # modalities reach DICOM


def test_jpeg2000_seg_frames_still_need_the_stored_transfer_syntax(node: EphemeralNode):
    """Why the viewer proxy keeps asking for ``transfer-syntax=*`` (docs/dicom-conformance.md).

    Orthanc 1.10.1 transcoded a JPEG 2000 BINARY SEG frame to 8 bits per pixel; 1.13 with
    DICOMweb 1.24 refuses to transcode it (400). The frame as stored comes back intact. When a
    newer Orthanc transcodes it right, this test fails: then the workaround can go.
    """
    _, datasets = _stored_study(node, shape=(2, 64, 48))  # JPEG 2000 needs 32+ pixels a side
    mask = np.zeros((2, 64, 48), np.uint8)
    mask[:, 10:40, 5:30] = 1
    lung = hd.sr.CodedConcept("39607008", "SCT", "Lung")
    segment = hd.seg.SegmentDescription(1, "Lung", lung, lung, hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        datasets, mask, hd.seg.SegmentationTypeValues.BINARY, [segment], hd.UID(), 90, hd.UID(), 1,
        "Tests", "seg", "1", "1", transfer_syntax_uid=JPEG2000Lossless,
    )  # fmt: skip
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    node.orthanc.request("POST", "/instances", buffer.getvalue())
    frame = (
        f"{node.config.orthanc_url}/dicom-web/studies/{seg.StudyInstanceUID}/series/{seg.SeriesInstanceUID}"
        f"/instances/{seg.SOPInstanceUID}/frames/1"
    )
    viewer = _session(node, "viewer")
    default = viewer.get(frame, headers={"Accept": 'multipart/related; type="application/octet-stream"'}, timeout=30)
    assert default.status_code == 400, "Orthanc transcodes the frame now: check it, then drop the proxy's workaround"
    stored = viewer.get(
        frame, headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}, timeout=30
    )
    assert stored.status_code == 200 and "1.2.840.10008.1.2.4.90" in stored.headers["Content-Type"]
