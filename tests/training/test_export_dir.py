"""Stage 2 skips files already written only when they came from the same backbone."""

from __future__ import annotations

import pytest

from neuroradix.errors import ConfigError
from neuroradix_train.stages.embeddings import BACKBONE_SHA, _claim_export_dir


def test_export_dir_is_claimed_by_one_backbone(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights a")
    b.write_bytes(b"weights b")
    out = tmp_path / "emb"
    _claim_export_dir(out, a)
    (out / "train").mkdir()
    (out / "train" / "train_1_a_1.pt").write_bytes(b"x")
    _claim_export_dir(out, a)  # resuming with the same weights is fine
    with pytest.raises(ConfigError, match="another backbone"):
        _claim_export_dir(out, b)


def test_export_dir_with_files_of_unknown_origin_is_refused(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    out = tmp_path / "emb"
    (out / "valid").mkdir(parents=True)
    (out / "valid" / "valid_1_a_1.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="unknown backbone"):
        _claim_export_dir(out, weights)
    assert not (out / BACKBONE_SHA).exists()
