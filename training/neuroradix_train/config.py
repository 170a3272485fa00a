"""Stage configuration: YAML files with the original defaults, overridable without editing them.

A run's configuration is the stage's default file (``training/neuroradix_train/configs/<stage>.yaml``,
``<stage>`` one of ``segmentation``, ``embeddings``, ``head``, ``contrastive``, ``evaluate``), then
any ``--config`` files merged on top in order, then ``--set dotted.key=value`` overrides (values
parsed as YAML, so ``--set train.lr=3e-4`` gives a float and ``--set model.preprocess.patch_size=64``
an int). Keys that are not in the defaults are refused, naming the key, so a typo never runs
silently with the default. The merged mapping becomes the stage's typed configuration
(:mod:`neuroradix_train.settings`), which checks every value's type; it is written next to the
checkpoints.

The names of before the stages were named by what they do (``stage1``, ``stage2``, ``stage3`` and
their ``-tiny`` files) are still accepted, with a ``DeprecationWarning`` and a log warning.
"""

from __future__ import annotations

import copy
import logging
import warnings
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional

import yaml

from neuroradix.errors import ConfigError
from neuroradix_train.settings import STAGE_CONFIGS, Section, StageConfig, as_dict, parse_stage_config

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(str(resources.files("neuroradix_train") / "configs"))
"""The shipped YAML files (package data)."""

OLD_STAGE_NAMES = {"stage1": "segmentation", "stage2": "embeddings", "stage3": "head"}
"""Deprecated stage names and the names that replace them."""


def current_name(name: str) -> str:
    """A stage or shipped-config name with a deprecated prefix (``stage1-tiny``) replaced, with a warning."""
    for old, new in OLD_STAGE_NAMES.items():
        if name == old or name.startswith(old + "-"):
            renamed = new + name[len(old) :]
            message = f"the training stage name {name!r} is deprecated: use {renamed!r}"
            warnings.warn(message, DeprecationWarning, stacklevel=3)
            logger.warning(message)
            return renamed
    return name


def default_config_path(name: str) -> Path:
    """Path of a shipped config, e.g. ``segmentation`` or ``segmentation-tiny``."""
    path = CONFIG_DIR / f"{current_name(name)}.yaml"
    if not path.is_file():
        raise ConfigError(f"no shipped config {name!r} (looked for {path})")
    return path


def _resolve(path: Path) -> Path:
    """``path``, or for a missing file named like an old shipped config (``stage1-tiny.yaml``) the shipped one."""
    path = Path(path)
    if not path.is_file() and path.suffix in (".yaml", ".yml") and path.stem.split("-")[0] in OLD_STAGE_NAMES:
        shipped = CONFIG_DIR / f"{current_name(path.stem)}.yaml"
        if shipped.is_file():
            return shipped
    return path


def _read(path: Path) -> dict:
    path = _resolve(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def merge(base: dict, override: dict, where: str = "", strict: bool = True) -> dict:
    """Deep-merge ``override`` into a copy of ``base``; unknown keys raise when ``strict``.

    Sections whose default is an empty mapping or ``None`` (free-form, e.g. ``bart``) accept any key;
    keys under ``model.`` are checked by the model's own configuration instead.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in out:
            if strict and not path.startswith("model."):  # model sections are validated by ModelConfig
                raise ConfigError(f"unknown config key {path!r}; known here: {sorted(out)}")
            out[key] = copy.deepcopy(value)
        elif isinstance(out[key], dict) and isinstance(value, dict) and out[key]:
            out[key] = merge(out[key], value, path, strict)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(items: Iterable[str]) -> dict:
    """``["train.lr=3e-4", "data.root=/x"]`` -> nested dict with YAML-parsed values."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from exc
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string; people mean a number
            try:
                value = float(value)
            except ValueError:
                pass
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def stage_of(path: Path) -> str:
    """The stage a config file configures, from its name (``segmentation-tiny.yaml`` -> ``segmentation``)."""
    stem = current_name(Path(path).stem)
    for stage in STAGE_CONFIGS:
        if stem == stage or stem.startswith(stage + "-"):
            return stage
    raise ConfigError(
        f"cannot tell which stage {path} configures: its name must start with one of {sorted(STAGE_CONFIGS)}"
    )


def load_config(
    stage: str, files: Optional[Iterable[Path]] = None, sets: Optional[Iterable[str]] = None
) -> StageConfig:
    """The typed, merged configuration of ``stage``.

    Parameters
    ----------
    stage:
        A stage name (``segmentation``, ``embeddings``, ``head``, ``contrastive``, ``evaluate``; the
        deprecated ``stage1``/``stage2``/``stage3`` with a warning) or the path of a YAML file whose
        name starts with one.
    files:
        YAML files merged on top, in order.
    sets:
        ``dotted.key=value`` overrides, applied last.

    Returns
    -------
    StageConfig
        The stage's model of :mod:`neuroradix_train.settings`.

    Raises
    ------
    ConfigError
        On a missing file, an unknown or mistyped key (named), or an invalid model section.
    """
    if str(stage).endswith((".yaml", ".yml")):
        base_path, name = Path(stage), stage_of(Path(stage))
    else:
        base_path = default_config_path(stage)
        name = stage_of(base_path)
    cfg = _read(base_path)
    for f in files or ():
        cfg = merge(cfg, _read(Path(f)))
    if sets:
        cfg = merge(cfg, parse_set(sets))
    return parse_stage_config(name, cfg)


def save_config(cfg: Section, path: Path) -> None:
    """Write a configuration as YAML (the run folder's ``config.yaml``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(as_dict(cfg), sort_keys=False), encoding="utf-8")
