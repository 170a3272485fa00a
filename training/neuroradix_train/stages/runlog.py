"""Per-step JSONL and per-epoch CSV/JSONL metric logs (rank 0 only), appended so resumes continue them.

Optionally the same numbers go to TensorBoard (``train.tensorboard: true``; needs the
``tensorboard`` package, which the project does not install): scalars ``step/<name>`` and
``epoch/<name>`` against the optimiser step, in ``<out_dir>/tensorboard``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional

from neuroradix.errors import ConfigError


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


class RunLog:
    """Writes ``steps.jsonl`` and ``epochs.jsonl`` + ``epochs.csv`` under ``out_dir``.

    On resume, lines for steps after the checkpoint's step are dropped first, so a run killed
    between a log write and its next checkpoint leaves no duplicate steps.
    """

    def __init__(
        self, out_dir: Path, enabled: bool = True, resume_step: Optional[int] = None, tensorboard: bool = False
    ) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional, absence handled below
            except ImportError as exc:
                raise ConfigError(
                    "train.tensorboard is on but the tensorboard package is missing "
                    "(pip install tensorboard, or set train.tensorboard=false)"
                ) from exc
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_step)
        self.steps_path = self.out_dir / "steps.jsonl"
        self.epochs_path = self.out_dir / "epochs.jsonl"
        self.csv_path = self.out_dir / "epochs.csv"
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            for p in (self.steps_path, self.epochs_path, self.csv_path):
                p.unlink(missing_ok=True)
        elif self.steps_path.exists():
            keep = [
                ln
                for ln in self.steps_path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= resume_step
            ]
            self.steps_path.write_text("".join(ln + "\n" for ln in keep))

    def step(self, **values) -> None:
        if self.enabled:
            with self.steps_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({k: _clean(v) for k, v in values.items()}) + "\n")
            self._scalars("step", values)

    def _scalars(self, prefix: str, values: dict) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if (
                key != "step"
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and _clean(value) is not None
            ):
                self.writer.add_scalar(f"{prefix}/{key}", value, values["step"])
        self.writer.flush()

    def epoch(self, **values) -> None:
        if not self.enabled:
            return
        self._scalars("epoch", values)
        values = {k: _clean(v) for k, v in values.items()}
        with self.epochs_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(values) + "\n")
        rows = [json.loads(ln) for ln in self.epochs_path.read_text().splitlines() if ln.strip()]
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        with self.csv_path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
