"""``train-smoke --encoder vit`` end to end (minutes on a 2-core CPU): run by ``make train-smoke ENCODER=vit``."""

from __future__ import annotations

import pytest

from neuroradix.models.release import load_release
from tests.training.smoke import VIT_THRESHOLDS, run_vit_smoke

pytestmark = [pytest.mark.slow, pytest.mark.smoke]


def test_vit_smoke_pipeline_meets_thresholds(tmp_path, training_real_ct_dir):
    result = run_vit_smoke(tmp_path, real_ct_dir=training_real_ct_dir, check=True)
    release = load_release(result["release"], allow_untrained=True, encoder="vit")
    assert release.untrained and release.encoder["name"] == "vit"
    r = result["retrieval"]
    assert r["recall@1"] >= VIT_THRESHOLDS["recall_at_1_x_chance"] * r["chance@1"]
    assert result["node"]["untrained"] and "SR" in result["node"]["modalities"]
