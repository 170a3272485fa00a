"""What is STOW'd carries a complete File Meta group: Orthanc stores the part as sent."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset

from neuroradix.pacs.dicomweb import complete_file_meta


def test_a_dataset_without_meta_gets_the_required_elements_written_as_sent():
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID = "2.25.123"
    ds.Modality = "DOC"
    ds.preamble = b"\x00" * 128
    complete_file_meta(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)  # written as is, the way a STOW-RS part is sent
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    meta = back.file_meta
    for keyword in (
        "FileMetaInformationGroupLength",
        "FileMetaInformationVersion",
        "ImplementationClassUID",
        "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID",
        "TransferSyntaxUID",
    ):
        assert keyword in meta, keyword
    assert meta.MediaStorageSOPInstanceUID == "2.25.123"
    # The group length counts the bytes of the meta elements after it.
    raw = buffer.getvalue()
    assert raw[128:132] == b"DICM"
    assert int.from_bytes(raw[140:144], "little") == meta.FileMetaInformationGroupLength
