"""Config merging and overrides; checkpoints with RNG states; the CLI registers its commands."""

from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch

from neuroradix.errors import ConfigError
from neuroradix_train.config import CONFIG_DIR, load_config
from neuroradix_train.stages import checkpoint as ckpt


def test_stage1_defaults_are_the_original_design():
    cfg = load_config("stage1")
    assert cfg["model"]["preprocess"]["patch_size"] == 96 and cfg["train"]["num_samples"] == 8
    assert cfg["model"]["backbone"] == {
        "in_channels": 2,
        "out_channels": 44,
        "feature_size": 48,
        "use_checkpoint": True,
    }
    assert cfg["train"]["lr"] == 1e-4 and cfg["augment"]["noise_std"] == 0.01
    assert cfg["augment"]["contrast_gamma"] == [0.7, 1.5] and cfg["augment"]["dropout_holes"] == 8


def test_overrides_and_unknown_keys():
    cfg = load_config("stage1", [CONFIG_DIR / "stage1-tiny.yaml"], ["train.lr=3e-4", "data.root=/x"])
    assert cfg["train"]["lr"] == 3e-4 and cfg["data"]["root"] == "/x"
    assert cfg["model"]["backbone"]["feature_size"] == 12 and cfg["model"]["preprocess"]["hu_window"] == [
        -1000.0,
        1000.0,
    ]
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        load_config("stage1", None, ["train.lrr=1"])


def test_tiny_configs_build_valid_model_configs(tmp_path):
    from neuroradix_train.stages.common import model_config

    m = model_config(load_config("stage1", [CONFIG_DIR / "stage1-tiny.yaml"]))
    assert m.preprocess.patch_size == 64 and m.backbone.feature_size == 12 and m.head.embed_dim == 288


def test_checkpoint_restores_model_optimizer_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    ckpt.seed_everything(5)
    ckpt.save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=None, step=7, epoch=1, config={"a": 1})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    payload = ckpt.load_checkpoint(tmp_path, model=model2, optimizer=opt2)
    assert payload["step"] == 7 and torch.equal(model2.weight, model.weight)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_cli_registers_subcommands(capsys):
    from neuroradix_train import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    for cmd in ("train-seg", "export-embeddings", "train-head", "evaluate", "publish-release", "train-smoke"):
        assert (
            parser.parse_args(
                [cmd]
                + (
                    ["--backbone-run", "a", "--head-run", "b", "--out", "c", "--version", "1"]
                    if cmd == "publish-release"
                    else []
                )
            ).command
            == cmd
        )
    assert cli.main(["train-seg", "--print-config", "--set", "train.epochs=3"]) == 0
    assert "epochs: 3" in capsys.readouterr().out
