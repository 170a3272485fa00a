"""The segmentation stage end to end (slow on a 2-core CPU: one 64^3 step of the tiny SwinUNETR takes 5-100 s
depending on load), the DDP run under torchrun, and the full smoke pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuroradix_train.config import CONFIG_DIR, load_config
from neuroradix_train.evaluation.plots import read_jsonl
from tests.training.training_helpers import kill_after_steps

pytestmark = [pytest.mark.slow, pytest.mark.smoke]
ROOT = Path(__file__).resolve().parents[2]


def _cfg(root, out, *sets):
    return load_config(
        "segmentation",
        [CONFIG_DIR / "segmentation-tiny.yaml"],
        [
            f"data.root={root}",
            f"train.out_dir={out}",
            "data.max_train_scans=4",
            "data.max_valid_scans=1",
            "train.epochs=2",
            "train.ckpt_every_steps=1",
            "train.val_every_epochs=2",
            *sets,
        ],
    )


def test_segmentation_resumes_after_sigkill_with_the_same_losses(mini_ctrate, tmp_path):
    """A run killed with SIGKILL after step 2 and resumed logs the losses of an uninterrupted run."""
    from neuroradix_train.stages.segmentation import train_seg

    sets = ["train.threads=1"]
    train_seg(_cfg(mini_ctrate, tmp_path / "whole", *sets))
    out = tmp_path / "killed"
    kill_after_steps(
        [
            "train-seg",
            "--config",
            str(CONFIG_DIR / "segmentation-tiny.yaml"),
            "--set",
            f"data.root={mini_ctrate}",
            "--set",
            f"train.out_dir={out}",
            "--set",
            "data.max_train_scans=4",
            "--set",
            "data.max_valid_scans=1",
            "--set",
            "train.epochs=2",
            "--set",
            "train.ckpt_every_steps=1",
            "--set",
            "train.val_every_epochs=2",
            *[a for s in sets for a in ("--set", s)],
        ],
        out / "steps.jsonl",
        2,
    )
    assert not (out / "backbone.pt").exists()
    r = train_seg(_cfg(mini_ctrate, out, *sets), resume=True)
    whole, resumed = read_jsonl(tmp_path / "whole" / "steps.jsonl"), read_jsonl(out / "steps.jsonl")
    assert [s["step"] for s in resumed] == [1, 2, 3, 4] and r["epoch"] == 2
    for a, b in zip(whole, resumed):
        assert abs(a["loss"] - b["loss"]) <= 1e-3 * a["loss"], (a, b)
    assert (out / "backbone.pt").is_file() and (out / "epochs.csv").is_file() and (out / "loss.png").is_file()


def test_torchrun_two_processes_gloo_matches_one_process(mini_ctrate, tmp_path):
    """2 ranks x 1 crop per step see the same crops as 1 process x 2 crops: the loss curves agree."""
    from neuroradix_train.stages.segmentation import train_seg

    sets = ["data.max_train_scans=4", "data.max_valid_scans=1", "train.epochs=3", "train.val_every_epochs=3"]
    train_seg(_cfg(mini_ctrate, tmp_path / "one", *sets, "train.batch_size=2"))
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'inference'}:{ROOT / 'training'}", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "neuroradix_train.cli",
        "train-seg",
        "--config",
        str(CONFIG_DIR / "segmentation-tiny.yaml"),
        "--set",
        f"data.root={mini_ctrate}",
        "--set",
        f"train.out_dir={tmp_path / 'ddp'}",
        "--set",
        "train.batch_size=1",
        "--set",
        "train.threads=1",
        "--set",
        "train.ckpt_every_steps=1",
        *[a for s in sets for a in ("--set", s)],
    ]
    subprocess.run(cmd, check=True, env=env, timeout=3600)
    one = read_jsonl(tmp_path / "one" / "steps.jsonl")
    ddp = read_jsonl(tmp_path / "ddp" / "steps.jsonl")
    assert [s["step"] for s in ddp] == [s["step"] for s in one] == [1, 2, 3, 4, 5, 6]  # 4 scans / 2 crops x 3 epochs
    assert all(s["crops"] == 2 for s in ddp)  # both ranks' crops count in each step
    for a, b in zip(one, ddp):
        assert abs(a["loss"] - b["loss"]) <= 0.1 * a["loss"], (a, b)
    assert one[-1]["loss"] < one[0]["loss"] and ddp[-1]["loss"] < ddp[0]["loss"]


def test_smoke_pipeline_meets_thresholds(tmp_path, training_real_ct_dir):
    from tests.training.smoke import run_smoke

    result = run_smoke(tmp_path, real_ct_dir=training_real_ct_dir, check=True)
    from neuroradix.models.release import load_release

    assert load_release(result["release"], allow_untrained=True).untrained
