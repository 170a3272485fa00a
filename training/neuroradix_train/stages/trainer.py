"""The training skeleton every trained stage runs: set-up, DDP, a resumable sampler, the schedule,
checkpoints and the loop.

A stage describes what is its own as a :class:`TrainingTask` (the module to train, the dataset and
its collate function, one training step, one validation) and hands it to :func:`fit`, which owns
everything else: AdamW, the warm-up/cosine schedule (:func:`warmup_cosine`), resuming from
``last.pt``, the DDP wrapper, the per-rank sampler, the step and epoch logs, the checkpoint rhythm
and ``--max-steps``. :class:`StageRun` is the process around it (threads, device and process
group, seed, the run folder). Composition, not subclassing: a stage's module reads top to bottom.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from neuroradix.errors import ConfigError
from neuroradix.models.config import ModelConfig
from neuroradix_train.config import save_config
from neuroradix_train.settings import Section, TrainConfig, as_dict, require
from neuroradix_train.stages import checkpoint as ckpt
from neuroradix_train.stages import distributed as D
from neuroradix_train.stages.runlog import RunLog

logger = logging.getLogger(__name__)


def set_threads(n: Optional[int]) -> None:
    """Limit torch's intra-op threads (``None``: torch's default)."""
    if n:
        torch.set_num_threads(int(n))


def progress(iterable, enabled: bool, **kwargs):
    """A tqdm progress bar on rank 0 (plain iteration elsewhere or without tqdm)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 - optional dependency, absent is handled below
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, dynamic_ncols=True, mininterval=2.0, **kwargs)


class StageRun:
    """One stage's process: threads, device and process group (torchrun), seed, its output folder.

    Parameters
    ----------
    device, threads:
        ``train.device`` / ``train.threads`` (or the export's).
    out_dir, out_key:
        The output folder and the key that names it (for the message when it is unset).
    seed:
        Seeds Python, numpy and torch when given.
    """

    def __init__(
        self, *, device: str, threads: Optional[int], out_dir: Optional[str], out_key: str, seed: Optional[int] = None
    ) -> None:
        set_threads(threads)
        self.info = D.setup(device)
        self.dir = Path(require(out_dir, out_key))
        if seed is not None:
            ckpt.seed_everything(seed)

    @classmethod
    def training(cls, train: TrainConfig) -> StageRun:
        """The run of a trained stage (its ``train`` section)."""
        return cls(
            device=train.device, threads=train.threads, out_dir=train.out_dir, out_key="train.out_dir", seed=train.seed
        )

    @property
    def is_main(self) -> bool:
        """Rank 0, which writes the run folder's files."""
        return self.info.is_main

    def write_config(self, cfg: Section, model: Optional[ModelConfig] = None) -> None:
        """On rank 0: create the folder, write ``config.yaml`` and (given) ``model_config.json``."""
        if not self.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.dir / "config.yaml")
        if model is not None:
            (self.dir / "model_config.json").write_text(json.dumps(model.to_dict(), indent=1), encoding="utf-8")

    def close(self) -> None:
        """Wait for every rank and end the process group."""
        D.barrier()
        D.teardown()


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


def warmup_cosine(optimizer: torch.optim.Optimizer, t: TrainConfig, n_items: int, world_size: int):
    """The learning-rate schedule of every stage: linear warm-up over ``warmup_steps``, then a cosine
    decay to zero at the planned step (``max_steps``, else ``epochs`` x steps per epoch); without
    ``cosine`` the rate stays flat after the warm-up."""
    per_epoch = math.ceil(n_items / world_size / t.batch_size)
    planned = int(t.max_steps or t.epochs * per_epoch)
    warmup, cosine = max(1, t.warmup_steps), t.cosine

    def factor(s: int) -> float:
        decay = 0.5 * (1 + math.cos(math.pi * min(s, planned) / planned)) if cosine else 1.0
        return min(1.0, (s + 1) / warmup) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
        parts: dict[str, Any],
        config: dict,
        is_main: bool,
        every: Optional[int],
        stop_at: Optional[int],
    ) -> None:
        self.run_dir, self.config, self.is_main = run_dir, config, is_main
        self.parts = parts
        self.every, self.stop_at = every, stop_at

    def save(self, step: int, epoch: int, batch_in_epoch: int) -> None:
        """Write ``last.pt`` (rank 0)."""
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


@dataclass(frozen=True)
class StepOutput:
    """What one training step gives the loop.

    ``losses`` holds ``"loss"`` (the one backpropagated) and any parts to log; each is averaged
    over the ranks. ``extra`` holds other numbers for the step's log line, logged as they are.
    """

    losses: dict[str, torch.Tensor]
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Validation:
    """One validation (rank 0): the full ``metrics``, the numbers of the epoch log ``row``, a log ``summary``."""

    metrics: dict
    row: dict
    summary: str = ""


@dataclass(frozen=True)
class TrainingTask:
    """What a stage trains and how: everything of a loop that is the stage's own.

    Parameters
    ----------
    model:
        The module trained (its parameters that require a gradient) and checkpointed.
    dataset, collate:
        Training samples (indexed by the sampler's keys) and the batch builder.
    step:
        ``step(batch, forward)`` -> :class:`StepOutput`; ``forward`` is ``model``, DDP-wrapped under torchrun.
    validate:
        ``validate()`` -> :class:`Validation`, called on rank 0 every ``val_every_epochs`` and after the last epoch.
    find_unused_parameters:
        Passed to DDP (a model whose forward leaves some parameters out).
    """

    model: torch.nn.Module
    dataset: torch.utils.data.Dataset
    collate: Callable[[list], Any]
    step: Callable[[Any, torch.nn.Module], StepOutput]
    validate: Callable[[], Validation]
    find_unused_parameters: bool = False


@dataclass(frozen=True)
class FitResult:
    """Where a run stopped: ``step``, ``epoch``, whether every epoch ran, and the last validation (rank 0)."""

    step: int
    epoch: int
    finished: bool
    validation: Optional[Validation]


def fit(
    run: StageRun, task: TrainingTask, t: TrainConfig, cfg: Section, *, resume: bool, max_steps: Optional[int]
) -> FitResult:
    """Train ``task`` for ``t.epochs`` epochs (or until ``max_steps`` / ``t.max_steps`` steps).

    Parameters
    ----------
    run:
        The stage's process and run folder.
    task:
        The stage's model, data, step and validation.
    t:
        The ``train`` section.
    cfg:
        The whole configuration (stored in each checkpoint).
    resume:
        Continue from ``<out_dir>/last.pt`` (model, optimiser, scheduler, step, position, RNG states).
    max_steps:
        Stop after this many optimiser steps in total (an interruption on purpose; overrides ``t.max_steps``).

    Returns
    -------
    FitResult
    """
    info, model = run.info, task.model
    n_items = len(task.dataset)  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay
    )
    scheduler = warmup_cosine(optimizer, t, n_items, info.world_size)
    step = epoch = start_in_epoch = 0
    if resume and (run.dir / ckpt.LAST).is_file():
        payload = ckpt.load_checkpoint(run.dir / ckpt.LAST, model=model, optimizer=optimizer, scheduler=scheduler)
        step, epoch, start_in_epoch = payload["step"], payload["epoch"], payload["extra"].get("batch_in_epoch", 0)
    runlog = RunLog(run.dir, enabled=info.is_main, resume_step=step if resume else None, tensorboard=t.tensorboard)
    forward = D.wrap_ddp(model, info, find_unused_parameters=task.find_unused_parameters)
    sampler = ResumableSampler(n_items, seed=t.seed, rank=info.rank, world_size=info.world_size)
    stop_at = int(max_steps or t.max_steps or 0) or None
    checkpoints = RunCheckpoints(
        run.dir,
        parts={"model": model, "optimizer": optimizer, "scheduler": scheduler},
        config=as_dict(cfg),
        is_main=info.is_main,
        every=t.ckpt_every_steps,
        stop_at=stop_at,
    )
    reduce_on = info.device if info.device.type == "cuda" else None
    last: Optional[Validation] = None
    t0 = time.time()
    model.train()
    while epoch < t.epochs and (stop_at is None or step < stop_at):
        sampler.set_epoch(epoch, start_in_epoch * t.batch_size)
        batch_in_epoch, broke, losses = start_in_epoch, False, []
        loader = torch.utils.data.DataLoader(
            task.dataset,
            batch_size=t.batch_size,
            sampler=sampler,
            collate_fn=task.collate,
            num_workers=t.num_workers,
            pin_memory=info.device.type == "cuda",
        )
        for batch in progress(loader, info.is_main, desc=f"epoch {epoch}", leave=False):
            out = task.step(batch, forward)
            optimizer.zero_grad(set_to_none=True)
            out.losses["loss"].backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            batch_in_epoch += 1
            values = {k: D.all_reduce_mean(float(v.item()), reduce_on) for k, v in out.losses.items()}
            losses.append(values["loss"])
            runlog.step(
                step=step,
                epoch=epoch,
                **values,
                **out.extra,
                lr=scheduler.get_last_lr()[0],
                seconds=round(time.time() - t0, 2),
                gpu_peak_gb=D.peak_memory_gb(info.device),
            )
            if checkpoints.after_step(step, epoch, batch_in_epoch):
                broke = batch_in_epoch < start_in_epoch + len(sampler)
                break
        start_in_epoch = 0
        if not broke:
            epoch += 1
            if info.is_main and (epoch % t.val_every_epochs == 0 or epoch == t.epochs):
                last = task.validate()
                train_loss = float(np.mean(losses)) if losses else None
                runlog.epoch(epoch=epoch, step=step, train_loss=train_loss, **last.row)
                shown = float("nan") if train_loss is None else train_loss
                logger.info("epoch %d step %d loss %.4f %s", epoch, step, shown, last.summary)
        checkpoints.epoch_end(step, epoch, batch_in_epoch if broke else None)
    return FitResult(step=step, epoch=epoch, finished=epoch >= t.epochs, validation=last)
