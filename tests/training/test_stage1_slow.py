"""Stage 1 end to end (slow on a 2-core CPU: one 64^3 step of the tiny SwinUNETR takes 5-100 s
depending on load), the DDP run under torchrun, and the full smoke pipeline."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuroradix_train.config import CONFIG_DIR, load_config
from neuroradix_train.plots import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.smoke]
ROOT = Path(__file__).resolve().parents[2]


def _cfg(root, out, *sets):
    return load_config("stage1", [CONFIG_DIR / "stage1-tiny.yaml"],
                       [f"data.root={root}", f"train.out_dir={out}", "data.max_train_scans=4", "data.max_valid_scans=1",
                        "train.epochs=2", "train.ckpt_every_steps=1", "train.val_every_epochs=2", *sets])


def test_stage1_resumes_after_kill(mini_ctrate, tmp_path):
    from neuroradix_train.stage1 import train_seg

    out = tmp_path / "s1"
    r = train_seg(_cfg(mini_ctrate, out), max_steps=1)  # killed after 1 of 4 steps
    assert r["step"] == 1
    r = train_seg(_cfg(mini_ctrate, out), resume=True)
    steps = read_jsonl(out / "steps.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and r["epoch"] == 2
    assert (out / "backbone.pt").is_file() and (out / "epochs.csv").is_file() and (out / "loss.png").is_file()


def test_torchrun_two_processes_gloo(mini_ctrate, tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'inference'}:{ROOT / 'training'}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "neuroradix_train.cli", "train-seg", "--set", f"data.root={mini_ctrate}",
           "--config", str(CONFIG_DIR / "stage1-tiny.yaml"), "--set", f"train.out_dir={tmp_path / 'ddp'}",
           "--set", "data.max_train_scans=4", "--set", "data.max_valid_scans=1", "--set", "train.epochs=2",
           "--set", "train.threads=1"]
    subprocess.run(cmd, check=True, env=env, timeout=3600)
    steps = read_jsonl(tmp_path / "ddp" / "steps.jsonl")
    assert [s["step"] for s in steps] == [1, 2]  # 4 scans / (2 ranks x batch 2) x 2 epochs
    assert all(s["crops"] == 4 for s in steps)  # both ranks' crops count in each step
    assert steps[-1]["loss"] < steps[0]["loss"] * 1.05


def test_smoke_pipeline_meets_thresholds(tmp_path):
    from neuroradix_train.smoke import run_smoke

    real = ROOT.parent / "shared" / "data" / "real-ct"
    result = run_smoke(tmp_path, real_ct_dir=real if real.is_dir() else None, check=True)
    from neuroradix.weights import load_release

    assert load_release(result["release"], allow_untrained=True).untrained
