"""Stage 3 on synthetic embeddings: it learns, it is killed with SIGKILL and resumes where it stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuroradix_train.config import CONFIG_DIR, load_config
from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.data.phantoms import PLANTED, phantom_report
from neuroradix_train.evaluation.plots import read_jsonl
from tests.training.training_helpers import kill_after_steps


def _embedding_export(directory, n_train=48, n_valid=16, seed=0):
    """An embeddings export whose embeddings carry the planted findings (one direction per finding)."""
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
            rows.append(
                {
                    "split": split,
                    "VolumeName": f"{split}_{i + 1}_a_1.nii.gz",
                    "embedding": rel,
                    "labels": labels,
                    "report": findings + " " + impression,
                }
            )
    (directory / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "model_config.json").write_text(json.dumps(cfg.to_dict()))
    return directory


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return _embedding_export(tmp_path_factory.mktemp("emb"))


def _sets(export, out, epochs):
    return [
        f"data.embeddings={export}",
        f"train.out_dir={out}",
        f"train.epochs={epochs}",
        "train.ckpt_every_steps=2",
        "train.val_every_epochs=100",
        "train.generate_on_val=false",
    ]


def _cfg(export, out, epochs):
    return load_config("head", [CONFIG_DIR / "head-tiny.yaml"], _sets(export, out, epochs))


def test_head_resumes_after_sigkill_with_the_same_losses(export, tmp_path):
    """Killed with SIGKILL after step 5 and resumed, the head logs the losses of an uninterrupted run."""
    from neuroradix_train.stages.head import train_head

    whole = tmp_path / "whole"
    train_head(_cfg(export, whole, epochs=4))
    out = tmp_path / "head"
    kill_after_steps(
        [
            "train-head",
            "--config",
            str(CONFIG_DIR / "head-tiny.yaml"),
            *[a for s in _sets(export, out, 4) for a in ("--set", s)],
        ],
        out / "steps.jsonl",
        5,
    )
    assert not (out / "head.pt").exists()
    payload = torch.load(out / "last.pt", weights_only=False)
    assert payload["step"] >= 2 and payload["optimizer"] is not None and "numpy" in payload["rng"]
    r = train_head(_cfg(export, out, epochs=4), resume=True)
    steps, reference = read_jsonl(out / "steps.jsonl"), read_jsonl(whole / "steps.jsonl")
    assert [x["step"] for x in steps] == list(range(1, 25))  # 48 scans / batch 8 x 4 epochs, no step twice
    assert r["step"] == 24 and r["epoch"] == 4
    for a, b in zip(reference, steps):  # the run continues exactly where it was
        assert abs(a["loss"] - b["loss"]) <= 1e-3 * abs(a["loss"]), (a, b)
    assert (out / "head.pt").is_file() and (out / "loss.png").is_file()


@pytest.mark.slow
def test_head_learns_planted_findings_and_reports(export, tmp_path):
    from neuroradix_train.stages.head import train_head

    r = train_head(
        load_config(
            "head",
            [CONFIG_DIR / "head-tiny.yaml"],
            [
                f"data.embeddings={export}",
                f"train.out_dir={tmp_path / 'h'}",
                "train.val_every_epochs=100",
                "train.epochs=80",
            ],
        )
    )
    per = r["metrics"]["classification"]["per_finding"]
    macro = float(np.mean([per[f]["auroc"] for f in PLANTED]))
    assert macro > 0.9, per
    assert r["metrics"]["report"]["ce_micro_f1"] > 0.8, r["metrics"]["report"]
    assert (tmp_path / "h" / "roc.png").is_file() and (tmp_path / "h" / "calibration.png").is_file()
