"""The corpus generator: at least 30 kinds, each written as the kind it claims to be."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from tests.corpus.generate import CASES, GOOD, STATES, SUCCEEDED, write_case
from tests.support import require_tool

SYNTAX = {
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-lossy-derived": JPEGBaseline8Bit,
    "jpeg-extended": JPEGExtended12Bit,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-ls": JPEGLSLossless,
    "jpeg-2000": JPEG2000Lossless,
    "rle": RLELossless,
    "deflated": DeflatedExplicitVRLittleEndian,
    "big-endian": ExplicitVRBigEndian,
    "implicit-vr": ImplicitVRLittleEndian,
}


def test_the_corpus_has_30_kinds_each_with_an_outcome():
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names) >= 30 and GOOD.name not in names
    assert {case.state for case in CASES} == set(STATES)
    assert all(case.reason for case in CASES if case.state != SUCCEEDED)


@pytest.mark.parametrize("name", sorted(SYNTAX))
def test_encoded_cases_are_stored_in_their_syntax_and_decode(name, tmp_path):
    case = next(c for c in CASES if c.name == name)
    if case.tool:
        require_tool(case.tool[0])
    paths = write_case(case, tmp_path / name, seed="unit")
    ds = pydicom.dcmread(paths[3])
    assert ds.file_meta.TransferSyntaxUID == SYNTAX[name]
    assert ds.pixel_array.shape == (64, 64) and ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.ImageType[0] == ("DERIVED" if case.lossy_derived else "ORIGINAL")
