"""Pieces shared by the stage runners: model config from a stage config, a resumable sampler,
the progress bar and the run-directory layout."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from neuroradix.errors import ConfigError
from neuroradix.models.config import ModelConfig
from neuroradix_train.stages import checkpoint as ckpt
from neuroradix_train.stages.runlog import RunLog

log = logging.getLogger(__name__)


def model_config(cfg: dict):
    """``cfg["model"]`` (preprocess / backbone / head sections) as a validated ``ModelConfig``."""
    section = dict(cfg.get("model") or {})
    fs = (section.get("backbone") or {}).get("feature_size", 48)
    head = dict(section.get("head") or {})
    head.setdefault("embed_dim", 24 * int(fs))  # keep the head consistent with the backbone
    section["head"] = head
    try:
        return ModelConfig.from_dict(section)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model config: {exc}") from exc


class ResumableSampler(torch.utils.data.Sampler):
    """Per-epoch permutation from ``(seed, epoch)``, sharded over ranks, started at any position.

    Yields ``epoch * n + index`` so the dataset can derive a per-sample augmentation seed that
    does not depend on worker count or on where a resumed run picked up.
    """

    def __init__(self, n: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if n < 1:
            raise ConfigError("the dataset is empty")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0
        self.per_rank = -(-n // world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first ``start`` samples of this rank."""
        self.epoch, self.start = int(epoch), int(start)

    def _indices(self) -> list[int]:
        order = (
            np.random.default_rng(self.seed + 7919 * self.epoch).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
        )
        padded = np.concatenate([order, order[: self.per_rank * self.world - self.n]])
        return padded[self.rank :: self.world].tolist()

    def __iter__(self) -> Iterator[int]:
        for i in self._indices()[self.start :]:
            yield self.epoch * self.n + int(i)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def optimizer_step(
    loss: torch.Tensor, model: torch.nn.Module, optimizer, scheduler, grad_clip: Optional[float]
) -> None:
    """One update: zero the gradients, backpropagate, clip if asked, step optimiser and schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def progress(iterable, enabled: bool, **kwargs):
    """A tqdm progress bar on rank 0 (plain iteration elsewhere or without tqdm)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 - optional dependency, absent is handled below
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, dynamic_ncols=True, mininterval=2.0, **kwargs)


def out_dir(cfg: dict) -> Path:
    value = (cfg.get("train") or {}).get("out_dir")
    if not value:
        raise ConfigError("config key 'train.out_dir' must be set")
    return Path(value)


def set_threads(n: Optional[int]) -> None:
    if n:
        torch.set_num_threads(int(n))


def warmup_cosine(optimizer: torch.optim.Optimizer, t: dict, n_items: int, world_size: int):
    """The learning-rate schedule of every stage: linear warm-up over ``warmup_steps``, then a cosine
    decay to zero at the planned step (``max_steps``, else ``epochs`` x steps per epoch); without
    ``cosine`` (a key stage 3 leaves out, meaning on) the rate stays flat after the warm-up."""
    per_epoch = math.ceil(n_items / world_size / t["batch_size"])
    planned = int(t.get("max_steps") or t["epochs"] * per_epoch)
    warmup, cosine = max(1, t["warmup_steps"]), t.get("cosine", True)

    def factor(s: int) -> float:
        decay = 0.5 * (1 + math.cos(math.pi * min(s, planned) / planned)) if cosine else 1.0
        return min(1.0, (s + 1) / warmup) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def begin_run(
    run_dir: Path, t: dict, *, resume: bool, is_main: bool, model, optimizer, scheduler
) -> tuple[int, int, int, RunLog]:
    """Resume from ``last.pt`` when asked and present; returns (step, epoch, batch in epoch, run log)."""
    step = epoch = start_in_epoch = 0
    if resume and (run_dir / ckpt.LAST).is_file():
        payload = ckpt.load_checkpoint(run_dir / ckpt.LAST, model=model, optimizer=optimizer, scheduler=scheduler)
        step, epoch, start_in_epoch = payload["step"], payload["epoch"], payload["extra"].get("batch_in_epoch", 0)
    runlog = RunLog(
        run_dir, enabled=is_main, resume_step=step if resume else None, tensorboard=bool(t.get("tensorboard"))
    )
    return step, epoch, start_in_epoch, runlog


class RunCheckpoints:
    """The checkpoint rhythm of a training loop (rank 0 writes; every rank stops together).

    ``after_step`` writes ``last.pt`` every ``every`` steps and says whether ``stop_at`` (a
    deliberate interruption, ``--max-steps``) is reached; ``epoch_end`` writes one at the end
    of each epoch or interruption, with the position in the epoch a resume starts from.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        model,
        optimizer,
        scheduler,
        config: dict,
        is_main: bool,
        every: Optional[int],
        stop_at: Optional[int],
    ) -> None:
        self.run_dir, self.config, self.is_main = run_dir, config, is_main
        self.parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
        self.every, self.stop_at = every, stop_at

    def save(self, step: int, epoch: int, batch_in_epoch: int) -> None:
        if self.is_main:
            ckpt.save_checkpoint(
                self.run_dir,
                **self.parts,
                step=step,
                epoch=epoch,
                config=self.config,
                extra={"batch_in_epoch": batch_in_epoch},
            )

    def after_step(self, step: int, epoch: int, batch_in_epoch: int) -> bool:
        """Checkpoint when due; ``True`` when the run must stop after this step."""
        if self.every and step % self.every == 0:
            self.save(step, epoch, batch_in_epoch)
        return self.stop_at is not None and step >= self.stop_at

    def epoch_end(self, step: int, epoch: int, interrupted_at: Optional[int]) -> None:
        """``interrupted_at``: the batch the epoch stopped after, ``None`` when it finished."""
        self.save(step, epoch, interrupted_at or 0)
