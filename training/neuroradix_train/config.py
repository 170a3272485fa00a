"""Stage configuration: YAML files with the original defaults, overridable without editing them.

A run's configuration is the stage's default file (``training/neuroradix_train/configs/<stage>.yaml``), then any
``--config`` files merged on top in order, then ``--set dotted.key=value`` overrides (values
parsed as YAML, so ``--set train.lr=3e-4`` gives a float and ``--set model.preprocess.patch_size=64``
an int). Keys that are not in the defaults are refused, naming the key, so a typo never runs
silently with the default. The merged configuration is written next to the checkpoints.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from neuroradix.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def default_config_path(name: str) -> Path:
    """Path of a shipped config, e.g. ``stage1`` or ``stage1-tiny``."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no shipped config {name!r} (looked for {path})")
    return path


def _read(path: Path) -> dict:
    path = Path(path)
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

    Sections whose default is an empty mapping or ``None`` (free-form, e.g. ``bart``) accept any key.
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


def load_config(stage: str, files: Optional[Iterable[Path]] = None, sets: Optional[Iterable[str]] = None) -> dict:
    """The merged configuration of ``stage`` (a shipped name like ``stage1`` or a YAML path)."""
    base_path = Path(stage) if str(stage).endswith((".yaml", ".yml")) else default_config_path(stage)
    cfg = _read(base_path)
    for f in files or ():
        cfg = merge(cfg, _read(Path(f)))
    if sets:
        cfg = merge(cfg, parse_set(sets))
    return cfg


def get(cfg: dict, dotted: str) -> Any:
    """``get(cfg, "train.lr")`` with a message naming the key when it is missing."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"config key {dotted!r} is missing")
        node = node[part]
    return node


def require(cfg: dict, dotted: str) -> Any:
    """Like :func:`get` but also refuses ``None`` (a required setting left empty)."""
    value = get(cfg, dotted)
    if value is None:
        raise ConfigError(f"config key {dotted!r} must be set (e.g. --set {dotted}=...)")
    return value


def save_config(cfg: dict, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
