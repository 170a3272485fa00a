"""Stage 2 on a frozen encoder (``export.encoder``) and stage 3's model config on its features; the
untrained-head release on a pretrained encoder (written and verified without its weights)."""

from __future__ import annotations

import json

import pytest

from neuroradix.models.config import tiny_config
from neuroradix.models.embeddings import load_embeddings
from neuroradix.models.encoders import ENCODERS
from neuroradix.models.release import load_release
from neuroradix_train.config import load_config
from neuroradix_train.data.phantoms import build_miniature_ctrate
from neuroradix_train.release import untrained_encoder_release
from neuroradix_train.stages.embeddings import ENCODER_JSON, export_embeddings, read_manifest
from neuroradix_train.stages.head import head_model_config
from tests.models.test_weights_encoders import TinyEncoder


def test_stage2_exports_frozen_encoder_tokens_and_stage3_reads_their_width(monkeypatch, tmp_path):
    monkeypatch.setitem(ENCODERS, "tiny-test", TinyEncoder)
    root = build_miniature_ctrate(tmp_path / "data", n_train=2, n_valid=1, seed=3)
    out = tmp_path / "emb"
    sets = [
        f"data.root={root}",
        f"export.out_dir={out}",
        "export.encoder=tiny-test",
        "export.device=cpu",
        "export.backbone=/nonexistent",  # not needed with a frozen encoder
    ]
    cfg = load_config("embeddings", sets=sets)
    manifest = export_embeddings(cfg)
    rows = read_manifest(out)
    assert manifest.is_file() and len(rows) == 3 and {r["split"] for r in rows} == {"train", "valid"}
    emb = load_embeddings(rows[0]["embedding_path"])
    assert tuple(emb.embeddings.shape) == (18, 16) and emb.grid is not None and emb.grid.counts == (2, 3, 3)
    assert emb.meta["encoder"] == "tiny-test"
    assert float(emb.positions.min()) >= 0.0 and float(emb.positions.max()) <= 1.0
    entry = json.loads((out / ENCODER_JSON).read_text(encoding="utf-8"))
    assert entry["name"] == "tiny-test" and entry["width"] == 16
    head_cfg = load_config("head")
    mcfg = head_model_config(head_cfg, out)
    assert mcfg.encoder == "tiny-test" and mcfg.head.embed_dim == 16
    # a rerun resumes; another encoder in the same folder is refused
    export_embeddings(cfg)
    monkeypatch.setitem(ENCODERS, "other", TinyEncoder)
    with pytest.raises(Exception, match="another backbone"):
        export_embeddings(load_config("embeddings", sets=[*sets, "export.encoder=other"]))


def test_untrained_release_on_a_pretrained_encoder(tmp_path):
    out = untrained_encoder_release("merlin", tmp_path / "merlin", head=tiny_config().head, verify_weights=False)
    rel = load_release(out, allow_untrained=True, encoder="merlin")
    assert rel.untrained and rel.config.encoder == "merlin" and rel.config.head.embed_dim == 2048
    assert rel.encoder["pretrained"]["sha256"].startswith("c7a9231f")
    assert "UNTRAINED" in rel.manifest["notes"] and "MIT" in rel.manifest["licence"]
