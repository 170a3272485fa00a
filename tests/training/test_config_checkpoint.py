"""Config merging, overrides and types; old stage names; checkpoints with RNG states; the CLI's commands."""

from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from neuroradix.errors import ConfigError
from neuroradix_train.config import CONFIG_DIR, load_config, save_config
from neuroradix_train.settings import HeadTrainingConfig, SegmentationConfig
from neuroradix_train.stages import checkpoint as ckpt
from tests.training.smoke import stage_sets


def test_segmentation_defaults_are_the_original_design():
    cfg = load_config("segmentation")
    assert isinstance(cfg, SegmentationConfig)
    assert cfg.model["preprocess"]["patch_size"] == 96 and cfg.train.num_samples == 8
    assert cfg.model["backbone"] == {
        "in_channels": 2,
        "out_channels": 44,
        "feature_size": 48,
        "use_checkpoint": True,
    }
    assert cfg.train.lr == 1e-4 and cfg.augment.noise_std == 0.01
    assert cfg.augment.contrast_gamma == (0.7, 1.5) and cfg.augment.dropout_holes == 8


def test_overrides_and_unknown_keys():
    cfg = load_config("segmentation", [CONFIG_DIR / "segmentation-tiny.yaml"], ["train.lr=3e-4", "data.root=/x"])
    assert isinstance(cfg, SegmentationConfig)
    assert cfg.train.lr == 3e-4 and cfg.data.root == "/x"
    assert cfg.model["backbone"]["feature_size"] == 12 and cfg.model["preprocess"]["hu_window"] == [-1000.0, 1000.0]
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        load_config("segmentation", None, ["train.lrr=1"])


@pytest.mark.parametrize(
    ("stage", "setting", "key"),
    [
        ("segmentation", "train.lr=fast", "train.lr"),
        ("segmentation", "train.dice_classes=some", "train.dice_classes"),
        ("head", "train.epochs=2.5", "train.epochs"),
        ("embeddings", "export.splits=train", "export.splits"),
        ("contrastive", "zero_shot.templates=[[a]]", "zero_shot.templates.0.1"),
        ("evaluate", "evaluate.labeler=bert", "evaluate.labeler"),
    ],
)
def test_a_mistyped_value_is_refused_at_load_with_its_key(stage, setting, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(stage, None, [setting])


def test_model_sections_are_validated_at_load():
    with pytest.raises(ConfigError, match="model config"):
        load_config("segmentation", None, ["model.backbone.feature_size=-3"])
    with pytest.raises(ConfigError, match="model.vit"):
        load_config("contrastive", None, ["model.vit.depthh=2"])


def test_the_typed_configuration_is_frozen_and_round_trips(tmp_path):
    cfg = load_config("head", [CONFIG_DIR / "head-tiny.yaml"], ["data.embeddings=/e"])
    assert isinstance(cfg, HeadTrainingConfig) and cfg.train.cosine and cfg.train.vocab_size == 600
    with pytest.raises(ValidationError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config("head", [tmp_path / "config.yaml"])  # a run's saved config reproduces it
    assert again == cfg


def test_a_required_setting_is_named_when_it_is_used():
    cfg = load_config("segmentation")
    assert isinstance(cfg, SegmentationConfig)
    with pytest.raises(ConfigError, match="'data.root' must be set"):
        cfg.data.root_dir()


@pytest.mark.parametrize(
    ("old", "new", "config_file"),
    [
        ("stage1", "segmentation", "stage1-tiny.yaml"),
        ("stage2", "embeddings", None),
        ("stage3", "head", "stage3-tiny.yaml"),
    ],
)
def test_old_stage_and_file_names_still_load_with_a_warning(old, new, config_file, caplog):
    files = [CONFIG_DIR / config_file] if config_file else None
    with pytest.warns(DeprecationWarning, match=f"'{old}(-tiny)?' is deprecated: use '{new}"):
        cfg = load_config(old, files)
    expected = load_config(new, [CONFIG_DIR / config_file.replace(old, new)] if config_file else None)
    assert cfg == expected
    assert f"use '{new}'" in caplog.text
    with pytest.raises(ValueError, match="must look like"):
        stage_sets(["stage9:train.lr=1"], ("segmentation", "embeddings", "head"))
    with pytest.warns(DeprecationWarning):
        assert stage_sets([f"{old}:train.seed=3"], (new,)) == {new: ["train.seed=3"]}


def test_tiny_configs_build_valid_model_configs(tmp_path):
    cfg = load_config("segmentation", [CONFIG_DIR / "segmentation-tiny.yaml"])
    assert isinstance(cfg, SegmentationConfig)
    m = cfg.network()
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
    for cmd in ("train-seg", "export-embeddings", "train-head", "evaluate", "publish-release"):
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
    assert cli.main(["train-head", "--print-config", "--set", "train.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out
    assert cli.main(["train-smoke"]) == 2  # moved out of the package: it says where
    assert "make train-smoke" in capsys.readouterr().err
