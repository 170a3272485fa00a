"""Fixtures of the training tests: a miniature CT-RATE-layout dataset built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

REAL_CT = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-ct"


@pytest.fixture(scope="session")
def mini_ctrate(tmp_path_factory) -> Path:
    """6 train + 4 valid phantoms, plus the real CTs (abdomen with its 117-class segmentation in train,
    thorax in valid) when ../shared/data/real-ct is present."""
    from neuroradix_train.data.phantoms import build_miniature_ctrate
    root = tmp_path_factory.mktemp("ctrate")
    return build_miniature_ctrate(root, n_train=6, n_valid=4, seed=1, real_ct_dir=REAL_CT if REAL_CT.is_dir() else None)

