"""Resumable checkpoints: model, optimiser, scheduler, step, epoch and every RNG state.

A checkpoint is written to a temporary file and renamed, so a process killed while saving
leaves the previous checkpoint intact. ``last.pt`` is the one ``--resume`` reads.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from neuroradix.errors import ConfigError

logger = logging.getLogger(__name__)

LAST = "last.pt"


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch (each rank gets ``seed + rank`` for its data stream)."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)


def rng_state() -> dict:
    """The RNG states of Python, numpy, torch (CPU) and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    scheduler: Optional[Any],
    step: int,
    epoch: int,
    config: dict,
    extra: Optional[dict] = None,
    name: str = LAST,
) -> Path:
    """Write a checkpoint atomically and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
    }
    path = out_dir / name
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    logger.info("checkpoint written: %s (step %d)", path, step)
    return path


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    restore_rng: bool = True,
) -> dict:
    """Load a checkpoint into the given objects; returns the payload (step, epoch, config, extra)."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    if optimizer is not None and payload.get("optimizer") is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if restore_rng and payload.get("rng") is not None:
        set_rng_state(payload["rng"])
    logger.info("resumed from %s at step %d", path, payload["step"])
    return payload
