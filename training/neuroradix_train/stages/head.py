"""The head stage: the multitask head (findings + report) on the exported embeddings.

Loss ``cls + lambda * (bart + coverage)`` with lambda 0.2, or uncertainty weighting; soft prompt
on or off (``model.head`` section). A byte-level BPE tokenizer is trained on the training
reports and saved with the run. Thresholds per finding are chosen on the validation split
(Youden's J, the ``held-out-threshold`` protocol) and written to ``thresholds.json``; the final
validation metrics report both named protocols (``held-out-threshold`` and ``ct-clip``, see
:mod:`neuroradix_train.evaluation.protocols`). The loop is :func:`neuroradix_train.stages.trainer.fit`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from neuroradix.errors import ConfigError
from neuroradix.models.config import HeadConfig, ModelConfig
from neuroradix.models.embeddings import load_embeddings
from neuroradix.models.head import MultitaskHead
from neuroradix.models.tokenizer import load_tokenizer, train_tokenizer
from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.evaluation.plots import plot_loss_curves
from neuroradix_train.evaluation.predictions import evaluate_predictions, head_metrics
from neuroradix_train.settings import HeadTrainingConfig
from neuroradix_train.stages import distributed as D
from neuroradix_train.stages.embeddings import read_manifest
from neuroradix_train.stages.trainer import StageRun, StepOutput, TrainingTask, Validation, fit

logger = logging.getLogger(__name__)


def head_model_config(cfg: HeadTrainingConfig, embeddings_dir: Path) -> ModelConfig:
    """The export's preprocessing and backbone (or encoder) + this config's head section."""
    path = Path(embeddings_dir) / "model_config.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing (the embeddings export writes it)")
    base = json.loads(path.read_text(encoding="utf-8"))
    head = dict(cfg.model.get("head") or {})
    encoder = str(base.get("encoder", "swinunetr"))  # a frozen-encoder export names it (embeddings stage)
    width = base.get("head", {}).get("embed_dim") if encoder != "swinunetr" else None
    head.setdefault("embed_dim", int(width or 24 * int(base["backbone"]["feature_size"])))
    try:
        return ModelConfig.from_dict(
            {
                "preprocess": base["preprocess"],
                "backbone": base["backbone"],
                "head": HeadConfig.from_dict(head).to_dict(),
                "encoder": encoder,
            }
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model.head: {exc}") from exc


class EmbeddingDataset(torch.utils.data.Dataset):
    """Manifest rows -> ``(embeddings [P, E], positions [P, 3], labels [19], report)``."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.items = []
        for r in rows:  # embeddings are small ([P, 24*fs]); keep them in memory
            emb = load_embeddings(r["embedding_path"])
            y = np.asarray(r["labels"], dtype=np.float32)
            self.items.append(
                (emb.embeddings, emb.positions, torch.from_numpy(np.append(y, float(y.max() > 0))), r["report"])
            )

    def __len__(self) -> int:
        return len(self.items)

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and standard deviation over every patch of every scan."""
        allp = torch.cat([item[0].float() for item in self.items])
        return allp.mean(0), allp.std(0, unbiased=False)

    def __getitem__(self, key: int):
        return self.items[key % len(self.items)]


def collate(batch):
    """Pad patch sequences to the longest in the batch; ``patch_mask`` marks real patches."""
    n = max(b[0].shape[0] for b in batch)
    e = batch[0][0].shape[1]
    emb = torch.zeros(len(batch), n, e)
    pos = torch.zeros(len(batch), n, 3)
    mask = torch.zeros(len(batch), n, dtype=torch.bool)
    for i, (x, p, _, _) in enumerate(batch):
        emb[i, : len(x)] = x
        pos[i, : len(x)] = p
        mask[i, : len(x)] = True
    return {
        "embeddings": emb,
        "positions": pos,
        "patch_mask": mask,
        "labels": torch.stack([b[2] for b in batch]),
        "reports": [b[3] for b in batch],
    }


def usable_rows(directory: Path, split: str) -> list[dict]:
    """Manifest rows of a split that have labels and a report (real CTs without labels are left out)."""
    rows = read_manifest(directory, split)
    keep = [r for r in rows if r["labels"] is not None and r["report"].strip()]
    if len(keep) < len(rows):
        logger.info(
            "%s: %d of %d scans have no labels or report and are left out", split, len(rows) - len(keep), len(rows)
        )
    if not keep:
        raise ConfigError(f"no scan of split {split!r} in {directory} has labels and a report")
    return keep


@torch.no_grad()
def predict(
    head,
    dataset: EmbeddingDataset,
    device,
    *,
    generate: bool,
    batch_size: int = 8,
    amp: bool = True,
    max_new_tokens: Optional[int] = None,
) -> dict:
    """Probabilities ``[n, 19]`` and (with ``generate``) greedy reports for a dataset."""
    head.eval()
    probs, texts, refs, labels = [], [], [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for b in loader:
        emb, pos, m = b["embeddings"].to(device), b["positions"].to(device), b["patch_mask"].to(device)
        with D.autocast(device, amp):
            out = head(emb, pos, patch_mask=m)
        probs.append(torch.sigmoid(out["logits_cls"].float()).cpu())
        labels.append(b["labels"])
        refs += b["reports"]
        if generate:
            t, _ = head.generate(emb, pos, max_new_tokens=max_new_tokens, patch_mask=m)
            texts += t
    head.train()
    return {
        "probabilities": torch.cat(probs).numpy(),
        "labels": torch.cat(labels).numpy(),
        "generated": texts,
        "references": refs,
    }


def train_head(cfg: HeadTrainingConfig, *, resume: bool = False, max_steps: Optional[int] = None) -> dict:
    """Run the head stage; returns validation metrics and paths.

    Parameters
    ----------
    cfg:
        The stage's configuration (see :func:`neuroradix_train.config.load_config`).
    resume:
        Continue from ``<out_dir>/last.pt``.
    max_steps:
        Stop after this many optimiser steps in total (overrides ``train.max_steps``; to interrupt a run on purpose).
    """
    t = cfg.train
    run = StageRun.training(t)
    info = run.info
    emb_dir = cfg.data.embeddings_dir()
    mcfg = head_model_config(cfg, emb_dir)
    train_rows, val_rows = usable_rows(emb_dir, cfg.data.train_split), usable_rows(emb_dir, cfg.data.val_split)
    tok_dir = run.dir / "tokenizer"
    run.write_config(cfg, mcfg)
    if info.is_main and not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer([r["report"] for r in train_rows], vocab_size=t.vocab_size, out_dir=tok_dir)
    D.barrier()
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(t.seed)
    head = MultitaskHead(mcfg.head, tok)
    train_ds, val_ds = EmbeddingDataset(train_rows), EmbeddingDataset(val_rows)
    if mcfg.head.standardize_embeddings:  # a resumed run gets the same values back from its checkpoint
        head.set_embedding_stats(*train_ds.feature_stats())
    head = head.to(info.device)
    amp = t.amp

    def step(b, forward) -> StepOutput:
        ids, att = head.tokenize_reports(b["reports"])
        with D.autocast(info.device, amp):
            out = forward(
                b["embeddings"].to(info.device),
                b["positions"].to(info.device),
                labels=b["labels"].to(info.device),
                input_ids=ids.to(info.device),
                attention_mask=att.to(info.device),
                patch_mask=b["patch_mask"].to(info.device),
            )
        parts = ("loss", "cls_loss", "bart_loss", "coverage_loss")
        return StepOutput({k: out[k] for k in parts if out.get(k) is not None})

    def check() -> Validation:
        pred = predict(head, val_ds, info.device, generate=False, amp=amp)
        m = head_metrics(pred["labels"], pred["probabilities"])
        auroc, f1 = m["macro"]["auroc"], m["macro"]["f1"]
        return Validation(m, {"val_macro_auroc": auroc, "val_macro_f1": f1}, f"val macro AUROC {auroc:.3f}")

    task = TrainingTask(
        model=head, dataset=train_ds, collate=collate, step=step, validate=check, find_unused_parameters=True
    )
    done = fit(run, task, t, cfg, resume=resume, max_steps=max_steps)
    result: dict = {"step": done.step, "epoch": done.epoch, "out_dir": str(run.dir)}
    if info.is_main:
        torch.save(head.state_dict(), run.dir / "head.pt")
        plot_loss_curves(
            run.dir / "steps.jsonl",
            run.dir / "loss.png",
            keys=("loss", "cls_loss", "bart_loss"),
            title="head: losses",
        )
        if done.finished:  # thresholds chosen on validation, full metrics and plots
            pred = predict(
                head, val_ds, info.device, generate=t.generate_on_val, amp=amp, max_new_tokens=t.max_new_tokens
            )
            result["metrics"] = evaluate_predictions(pred, run.dir, names=FINDINGS)
    run.close()
    return result
