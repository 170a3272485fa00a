"""Stage 3 on synthetic embeddings: it learns, it is killed (max-steps) and resumes where it stopped."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuroradix_train.config import CONFIG_DIR, load_config
from neuroradix_train.findings import FINDINGS
from neuroradix_train.phantoms import PLANTED, phantom_report
from neuroradix_train.plots import read_jsonl


def _embedding_export(directory, n_train=48, n_valid=16, seed=0):
    """A stage-2 export whose embeddings carry the planted findings (one direction per finding)."""
    from neuroradix.models.config import tiny_config
    from neuroradix.models.embeddings import save_embeddings
    from neuroradix.models.sliding import PatchGrid

    rng = np.random.default_rng(seed)
    cfg = tiny_config()
    dim = cfg.backbone.embed_dim
    directions = rng.normal(size=(len(PLANTED), dim)).astype(np.float32)
    grid = PatchGrid(((0,), (0,), (0, 32)), 64, (64, 64, 96), np.eye(4))
    rows = []
    for split, n in (("train", n_train), ("valid", n_valid)):
        for i in range(n):
            planted = [f for f in PLANTED if rng.random() < 0.4]
            vec = sum((directions[PLANTED.index(f)] for f in planted), np.zeros(dim, np.float32))
            emb = torch.from_numpy(vec + 0.3 * rng.normal(size=(2, dim)).astype(np.float32))
            rel = f"{split}/{split}_{i + 1}_a_1.pt"
            save_embeddings(directory / rel, emb, grid)
            labels = [1 if f in planted else 0 for f in FINDINGS]
            findings, impression = phantom_report(planted, rng)
            rows.append({"split": split, "VolumeName": f"{split}_{i + 1}_a_1.nii.gz", "embedding": rel,
                         "labels": labels, "report": findings + " " + impression})
    (directory / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "model_config.json").write_text(json.dumps(cfg.to_dict()))
    return directory


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return _embedding_export(tmp_path_factory.mktemp("emb"))


def _cfg(export, out, epochs):
    return load_config("stage3", [CONFIG_DIR / "stage3-tiny.yaml"],
                       [f"data.embeddings={export}", f"train.out_dir={out}", f"train.epochs={epochs}",
                        "train.ckpt_every_steps=2", "train.val_every_epochs=100", "train.generate_on_val=false"])


def test_head_resumes_after_kill(export, tmp_path):
    from neuroradix_train.stage3 import train_head

    out = tmp_path / "head"
    r = train_head(_cfg(export, out, epochs=4), max_steps=5)  # "killed" after 5 of 24 steps
    assert r["step"] == 5 and not (out / "metrics.json").exists()
    first = read_jsonl(out / "steps.jsonl")
    assert [x["step"] for x in first] == [1, 2, 3, 4, 5]
    payload = torch.load(out / "last.pt", weights_only=False)
    assert payload["step"] == 5 and payload["optimizer"] is not None and "numpy" in payload["rng"]
    r = train_head(_cfg(export, out, epochs=4), resume=True)
    steps = read_jsonl(out / "steps.jsonl")
    assert [x["step"] for x in steps] == list(range(1, 25))  # 48 scans / batch 8 x 4 epochs, no step twice
    assert r["step"] == 24 and r["epoch"] == 4
    # the loss continues from where it was, not from an untrained head
    assert steps[5]["loss"] < steps[0]["loss"]
    assert (out / "head.pt").is_file() and (out / "loss.png").is_file()


@pytest.mark.slow
def test_head_learns_planted_findings_and_reports(export, tmp_path):
    from neuroradix_train.stage3 import train_head

    r = train_head(load_config("stage3", [CONFIG_DIR / "stage3-tiny.yaml"],
                               [f"data.embeddings={export}", f"train.out_dir={tmp_path / 'h'}",
                                "train.val_every_epochs=100"]))
    per = r["metrics"]["classification"]["per_finding"]
    macro = float(np.mean([per[f]["auroc"] for f in PLANTED]))
    assert macro > 0.9, per
    assert r["metrics"]["report"]["ce_micro_f1"] > 0.8, r["metrics"]["report"]
    assert (tmp_path / "h" / "roc.png").is_file() and (tmp_path / "h" / "calibration.png").is_file()
