"""The segmentation stage: the two-channel SwinUNETR segmentation backbone (43 classes).

Pipeline per scan (MONAI dictionary transforms, the original design's defaults in
``training/neuroradix_train/configs/segmentation.yaml``): cached preprocessing with ``RemapLabelsD`` (source scheme ->
43) -> ``AddGlobalResized`` -> ``RandCropByPosNegLabeld`` (96^3, 8 samples) ->
``AppendGlobalChannel`` -> flips on all axes, 90-degree rotations, a random affine, Gaussian
noise, contrast, coarse dropout. Loss ``DiceCELoss`` (one-hot + softmax), AdamW, bf16
autocast on GPU, gradient checkpointing from the backbone config, DDP under torchrun; the loop is
:func:`neuroradix_train.stages.trainer.fit`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from monai import transforms as T
from monai.data import list_data_collate
from monai.losses import DiceCELoss, DiceLoss

from neuroradix.errors import ConfigError
from neuroradix.models.backbone import build_backbone, forward_with_features
from neuroradix.models.remap import load_remap
from neuroradix.models.sliding import SlidingOptions, sliding_segment
from neuroradix.models.transforms import AddGlobalResizedD, AppendGlobalChannelD
from neuroradix_train.data.dataset import load_records
from neuroradix_train.data.preprocess import cache_key, cached_preprocess
from neuroradix_train.evaluation.metrics import dice_per_class
from neuroradix_train.evaluation.plots import plot_loss_curves
from neuroradix_train.settings import RemapData, SegmentationAugment, SegmentationConfig, SegmentationTrain
from neuroradix_train.stages import distributed as D
from neuroradix_train.stages.trainer import StageRun, StepOutput, TrainingTask, Validation, fit, progress

logger = logging.getLogger(__name__)


def train_transforms(a: SegmentationAugment, t: SegmentationTrain, patch: int):
    """The segmentation training transforms (MONAI ``Compose``) for cached ``{"image", "label"}`` dicts."""
    roi = (patch,) * 3
    keys = ["image", "label"]
    return T.Compose(
        [
            AddGlobalResizedD(keys="image", global_key="global", size=patch),
            # pad at the far end, as the node's sliding window does: a scan smaller than the patch must
            # sit at the same place in training and at inference
            T.SpatialPadd(keys=keys, spatial_size=roi, method="end"),
            T.RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=roi,
                pos=t.pos,
                neg=t.neg,
                num_samples=t.num_samples,
                allow_smaller=False,
            ),
            AppendGlobalChannelD(keys="image", global_key="global"),
            T.RandFlipd(keys=keys, prob=a.flip_prob, spatial_axis=0),
            T.RandFlipd(keys=keys, prob=a.flip_prob, spatial_axis=1),
            T.RandFlipd(keys=keys, prob=a.flip_prob, spatial_axis=2),
            T.RandRotate90d(keys=keys, prob=a.rot90_prob, max_k=a.rot90_max_k),
            T.RandAffined(
                keys=keys,
                prob=a.affine_prob,
                rotate_range=[a.affine_rotate] * 3,
                scale_range=[a.affine_scale] * 3,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            T.RandGaussianNoised(keys="image", prob=a.noise_prob, std=a.noise_std),
            T.RandAdjustContrastd(keys="image", prob=a.contrast_prob, gamma=a.contrast_gamma),
            T.RandCoarseDropoutd(keys="image", holes=a.dropout_holes, spatial_size=a.dropout_size, prob=a.dropout_prob),
            T.EnsureTyped(keys=keys, track_meta=False),
        ]
    )


class SegDataset(torch.utils.data.Dataset):
    """Cached scans -> list of ``num_samples`` augmented crops; the sample key seeds the augmentation."""

    def __init__(self, files: list[Path], transform, seed: int) -> None:
        self.files, self.transform, self.seed = files, transform, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int):
        with np.load(self.files[key % len(self.files)]) as z:
            item = {
                "image": torch.from_numpy(z["image"].astype(np.float32))[None],
                "label": torch.from_numpy(z["label"].astype(np.int64))[None],
            }
        self.transform.set_random_state(seed=(self.seed * 1_000_003 + int(key)) % (2**32))
        return self.transform(item)


class SegLoss(torch.nn.Module):
    """``DiceCELoss`` (one-hot + softmax) with a choice of the classes the Dice term averages over.

    ``dice_classes="all"`` is MONAI's ``DiceCELoss`` as is (the original design). With 44 output
    channels most classes are absent from a crop; their soft Dice stays near 1 with almost no
    gradient, so a crop's few present organs get 1/44 of the Dice term each. ``"present"``
    averages the Dice over the classes present in each crop's label instead (the cross-entropy
    still pushes absent classes down everywhere), which small-data runs learn much faster with.
    """

    def __init__(self, dice_classes: str = "all") -> None:
        super().__init__()

        if dice_classes not in ("all", "present"):
            raise ConfigError(f"train.dice_classes must be 'all' or 'present', got {dice_classes!r}")
        self.present = dice_classes == "present"
        self.loss = (
            DiceLoss(to_onehot_y=True, softmax=True, reduction="none")
            if self.present
            else DiceCELoss(to_onehot_y=True, softmax=True)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.present:
            return self.loss(logits, target)
        per_class = self.loss(logits, target).flatten(1)  # [B, C]
        voxels = target.flatten(1).long()
        counts = torch.zeros_like(per_class).scatter_add_(1, voxels, torch.ones_like(voxels, dtype=per_class.dtype))
        present = (counts > 0).to(per_class.dtype)
        dice = (per_class * present).sum() / present.sum()
        ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long())
        return dice + ce


def _collate(batch):
    return list_data_collate(batch)


def prepare_cache(d: RemapData, split: str, pcfg, *, need_labels: bool) -> list:
    """Preprocess a split once into the cache folder; returns ``(record, npz path)`` pairs."""
    root = d.root_dir()
    cache_dir = d.cache("segmentation")
    remap = load_remap(d.remap)
    records = load_records(root, split, require_labels=False)
    if need_labels:
        records = [r for r in records if r.segmentation is not None]
        if not records:
            raise ConfigError(f"no scan of split {split!r} has a segmentation under dataset/segmentations/{split}/")
    records = d.limit(records, split)
    out = []
    for r in progress(records, True, desc=f"preprocess {split}"):
        cached_preprocess(r, pcfg, cache_dir, remap=remap, intensity=d.intensity, with_labels=need_labels)
        key = cache_key(
            r.path, pcfg.to_dict(), remap.name if (need_labels and r.segmentation is not None) else None, d.intensity
        )
        out.append((r, cache_dir / f"{r.stem}-{key}.npz"))
    return out


def sliding_window_segment(model, image: torch.Tensor, pcfg, device, amp: bool) -> np.ndarray:
    """Segment one preprocessed ``[1, D, H, W]`` image exactly as the node does; returns ``[D, H, W]`` labels."""
    res = sliding_segment(
        image[0],
        lambda x: forward_with_features(model, x),
        pcfg.patch_size,
        pcfg.overlap,
        pcfg.sigma_scale,
        options=SlidingOptions(sw_batch_size=2, amp=amp),
        device=device,
    )
    return res.labels


def validate(model, items: list, pcfg, device, amp: bool, num_classes: int) -> dict:
    """Mean and per-class Dice over validation scans (classes absent from prediction and truth skipped)."""
    model.eval()
    per: dict[int, list[float]] = {}
    for _, path in items:
        with np.load(path) as z:
            image = torch.from_numpy(z["image"].astype(np.float32))[None]
            label = z["label"]
        pred = sliding_window_segment(model, image, pcfg, device, amp)
        for c, v in dice_per_class(pred, label, range(1, num_classes)).items():
            if not math.isnan(v):
                per.setdefault(c, []).append(v)
    model.train()
    per_class = {c: float(np.mean(v)) for c, v in sorted(per.items())}
    return {
        "dice_mean": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "dice_per_class": per_class,
    }


def train_seg(cfg: SegmentationConfig, *, resume: bool = False, max_steps: Optional[int] = None) -> dict:
    """Run the segmentation stage; returns the last validation metrics and the paths written.

    Parameters
    ----------
    cfg:
        The stage's configuration (see :func:`neuroradix_train.config.load_config`).
    resume:
        Continue from ``<out_dir>/last.pt`` (model, optimiser, scheduler, step, RNG states).
    max_steps:
        Stop after this many optimiser steps in total (overrides ``train.max_steps``); used to
        interrupt a run on purpose.
    """
    t = cfg.train
    run = StageRun.training(t)
    info = run.info
    mcfg = cfg.network()
    pcfg, bcfg = mcfg.preprocess, mcfg.backbone
    run.write_config(cfg, mcfg)
    if info.is_main:
        train_items = prepare_cache(cfg.data, cfg.data.train_split, pcfg, need_labels=True)
        val_items = prepare_cache(cfg.data, cfg.data.val_split, pcfg, need_labels=True)
    D.barrier()
    if not info.is_main:  # the cache is complete: this only resolves the file names
        train_items = prepare_cache(cfg.data, cfg.data.train_split, pcfg, need_labels=True)
        val_items = prepare_cache(cfg.data, cfg.data.val_split, pcfg, need_labels=True)

    model = build_backbone(bcfg).to(info.device)
    loss_fn = SegLoss(t.dice_classes)
    amp = t.amp

    def step(batch, forward) -> StepOutput:
        x = batch["image"].to(info.device, non_blocking=True)
        y = batch["label"].to(info.device, non_blocking=True)
        with D.autocast(info.device, amp):
            loss = loss_fn(forward(x), y)
        return StepOutput({"loss": loss}, {"crops": int(x.shape[0]) * info.world_size})

    def check() -> Validation:
        val = validate(model, val_items, pcfg, info.device, amp, bcfg.out_channels)
        return Validation(
            val,
            {"val_dice_mean": val["dice_mean"], **{f"dice_{c}": v for c, v in val["dice_per_class"].items()}},
            f"val dice {val['dice_mean']:.3f}",
        )

    dataset = SegDataset([p for _, p in train_items], train_transforms(cfg.augment, t, pcfg.patch_size), seed=t.seed)
    task = TrainingTask(model=model, dataset=dataset, collate=_collate, step=step, validate=check)
    done = fit(run, task, t, cfg, resume=resume, max_steps=max_steps)
    result = {"step": done.step, "epoch": done.epoch, "out_dir": str(run.dir)}
    if info.is_main:
        last_val = done.validation.metrics if done.validation else check().metrics
        torch.save(model.state_dict(), run.dir / "backbone.pt")
        plot_loss_curves(run.dir / "steps.jsonl", run.dir / "loss.png", title="segmentation: DiceCE loss")
        (run.dir / "val_metrics.json").write_text(json.dumps(last_val, indent=1))
        result.update(last_val)
    run.close()
    return result
