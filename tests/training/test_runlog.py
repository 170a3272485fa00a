"""Metric logs: JSONL/CSV always, TensorBoard scalars when asked for."""

from __future__ import annotations

import builtins

import pytest

from neuroradix.errors import ConfigError
from neuroradix_train.evaluation.plots import read_jsonl
from neuroradix_train.stages.runlog import RunLog
from tests.support import require_module


def test_resume_drops_steps_after_the_checkpoint(tmp_path):
    log = RunLog(tmp_path)
    for s in (1, 2, 3):
        log.step(step=s, loss=1.0 / s)
    RunLog(tmp_path, resume_step=2)
    assert [r["step"] for r in read_jsonl(tmp_path / "steps.jsonl")] == [1, 2]


def test_tensorboard_scalars_are_written(tmp_path):
    require_module("tensorboard")  # installed with the project's training extra
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLog(tmp_path, tensorboard=True)
    log.step(step=1, epoch=0, loss=2.0, lr=1e-3, gpu_peak_gb=None)
    log.step(step=2, epoch=0, loss=1.5, lr=1e-3, gpu_peak_gb=None)
    log.epoch(epoch=1, step=2, train_loss=1.75, val_dice_mean=float("nan"))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("step/loss")] == [(1, 2.0), (2, 1.5)]
    assert [e.value for e in acc.Scalars("epoch/train_loss")] == [1.75]
    assert "epoch/val_dice_mean" not in acc.Tags()["scalars"]  # NaN is not a number to plot
    assert (tmp_path / "epochs.csv").is_file()


def test_tensorboard_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        RunLog(tmp_path, tensorboard=True)
