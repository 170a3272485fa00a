"""The embeddings stage: patch embeddings of every scan, written once for the head's training.

For each scan: cached preprocessing -> the node's own sliding-window pass
(:func:`neuroradix.models.sliding.sliding_segment` with
:func:`neuroradix.models.backbone.forward_with_features`), which gives the label map and the
``[num_patches, 24*feature_size]`` embeddings in one backbone pass -> one ``.pt`` file per scan
(:func:`neuroradix.models.embeddings.save_embeddings`) and a manifest ``manifest.jsonl`` with one
line per scan (split, VolumeName, embedding file, labels, report) that the head's dataset reads.
Scans are sharded over torchrun ranks; files already written are skipped, so an interrupted
export resumes where it stopped.

With ``export.encoder`` set (``merlin``, ``astra`` or another name of
:data:`neuroradix.models.encoders.ENCODERS`, with ``export.encoder_kwargs``) the features come from
that frozen encoder instead: each scan's HU volume -> the encoder's own preprocessing -> its tokens
(``[N, width]``, one per cell of its token grid) in the same file format, and no segmentation backbone is
needed.  ``model_config.json`` then names the encoder and the head's ``embed_dim`` (its width), and
``encoder.json`` holds the release manifest's ``encoder`` entry (for a pretrained one: package,
version, sha256, licence, source).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from neuroradix.errors import ConfigError
from neuroradix.models.backbone import build_backbone, forward_with_features
from neuroradix.models.config import HeadConfig, ModelConfig
from neuroradix.models.embeddings import save_embeddings
from neuroradix.models.encoders import build_encoder
from neuroradix.models.pretrained import PRETRAINED
from neuroradix.models.release import pretrained_encoder_entry, sha256_file
from neuroradix.models.remap import load_remap
from neuroradix.models.sliding import SlidingOptions, sliding_segment
from neuroradix_train.data.dataset import ScanRecord, load_records, load_volume
from neuroradix_train.data.preprocess import cached_preprocess
from neuroradix_train.settings import EmbeddingsConfig, ExportSection, model_config, require
from neuroradix_train.stages import distributed as D
from neuroradix_train.stages.trainer import StageRun, progress

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
BACKBONE_SHA = "backbone.sha256"
ENCODER_JSON = "encoder.json"


def _backbone_path(cfg: EmbeddingsConfig) -> Path:
    src = Path(require(cfg.export.backbone, "export.backbone"))
    return src / "backbone.pt" if src.is_dir() else src


def _claim_export_dir(out: Path, backbone: Path | str) -> None:
    """Record which backbone an export folder holds; refuse to mix embeddings of two backbones.

    Files already written are skipped on a rerun (resuming an interrupted export), which is only
    right when they came from the same weights.  ``backbone`` is the segmentation weights file, or the
    identity (a digest) of another encoder's weights.
    """
    digest = sha256_file(backbone) if isinstance(backbone, Path) else str(backbone)
    marker = out / BACKBONE_SHA
    has_files = any(out.glob("*/*.pt"))
    if marker.is_file():
        if marker.read_text(encoding="utf-8").strip() != digest:
            raise ConfigError(
                f"{out} holds embeddings of another backbone (sha256 {marker.read_text().strip()[:12]}, "
                f"this one {digest[:12]}): choose a new export.out_dir or delete the folder"
            )
    elif has_files:
        raise ConfigError(
            f"{out} holds embeddings of an unknown backbone: choose a new export.out_dir or delete the folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest + "\n", encoding="utf-8")


def load_backbone(cfg: EmbeddingsConfig, mcfg: ModelConfig, device):
    """The segmentation backbone: ``export.backbone`` (a ``backbone.pt`` state dict or a segmentation run folder)."""
    path = _backbone_path(cfg)
    if not path.is_file():
        raise ConfigError(f"segmentation backbone {path} does not exist (run train-seg first)")
    model = build_backbone(mcfg.backbone)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def segmentation_model_config(cfg: EmbeddingsConfig) -> ModelConfig:
    """The model config of the segmentation run named by ``export.backbone`` (its ``model_config.json``),
    else the ``model`` section of this config."""
    src = Path(require(cfg.export.backbone, "export.backbone"))
    path = (src if src.is_dir() else src.parent) / "model_config.json"
    if path.is_file():
        return ModelConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    return model_config(cfg.model)


def _encoder_weights(e: ExportSection) -> Optional[Path]:
    """``export.encoder_weights``: a state dict file or a folder holding ``encoder.pt`` (e.g. a contrastive run)."""
    value = e.encoder_weights
    if not value:
        return None
    path = Path(value) / "encoder.pt" if Path(value).is_dir() else Path(value)
    if not path.is_file():
        raise ConfigError(f"export.encoder_weights: {path} does not exist")
    return path


def _encoder_identity(name: str, kwargs: dict) -> tuple[dict, str]:
    """The manifest entry of encoder ``name`` and a digest naming its weights (for the export marker)."""
    if name in PRETRAINED and kwargs.get("pretrained", True):
        entry = pretrained_encoder_entry(name)
        return entry, entry["pretrained"]["sha256"]
    entry = {"name": name, "kwargs": dict(kwargs)}
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode("utf-8")).hexdigest()
    return entry, digest


def _manifest_entry(split: str, r, rel: Path) -> dict:
    """The export manifest's line for scan ``r`` of ``split``, its features at ``rel``."""
    return {
        "split": split,
        "VolumeName": r.name,
        "embedding": rel.as_posix(),
        "labels": r.labels.tolist() if r.labels is not None else None,
        "report": r.report,
    }


def _start_export(cfg: EmbeddingsConfig, run: StageRun, mcfg: ModelConfig, weights: Path | str) -> None:
    """Rank 0 claims the folder for these ``weights`` and writes the configs; every rank waits for it."""
    if run.is_main:
        _claim_export_dir(run.dir, weights)
    run.write_config(cfg, mcfg)
    D.barrier()


def _export_scans(
    cfg: EmbeddingsConfig, run: StageRun, desc: str, write: Callable[[ScanRecord, str, Path], None]
) -> Path:
    """Features of every scan of the configured splits (``write(record, split, file)``), sharded over
    ranks, files already there skipped; then the manifest (rank 0). Returns the manifest's path."""
    info, out = run.info, run.dir
    lines = []
    for split in cfg.export.splits:
        records = cfg.data.limit(load_records(cfg.data.root_dir(), split, require_labels=False), split)
        for i, r in enumerate(progress(records, info.is_main, desc=f"{desc} {split}")):
            rel = Path(split) / f"{r.stem}.pt"
            if i % info.world_size == info.rank and not (out / rel).is_file():
                tmp = out / rel.with_suffix(".tmp")
                write(r, split, tmp)
                tmp.replace(out / rel)
            lines.append(_manifest_entry(split, r, rel))
    D.barrier()
    manifest = out / MANIFEST
    if info.is_main:
        manifest.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
        logger.info("%s of %d scans in %s", desc, len(lines), out)
    run.close()
    return manifest


def _export_run(cfg: EmbeddingsConfig) -> StageRun:
    e = cfg.export
    return StageRun(device=e.device, threads=e.threads, out_dir=e.out_dir, out_key="export.out_dir")


def export_encoder_features(cfg: EmbeddingsConfig) -> Path:
    """The embeddings stage on a frozen encoder (``export.encoder``): tokens of every scan; returns the manifest path."""
    e = cfg.export
    run = _export_run(cfg)
    name = str(e.encoder)
    kwargs = dict(e.encoder_kwargs)
    cfg.data.root_dir()  # required: fail before the encoder is built
    encoder = build_encoder(name, **kwargs)
    weights = _encoder_weights(e)
    if weights is not None:  # a trained encoder (the contrastive ViT): its state dict, strictly
        encoder.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    encoder = encoder.to(run.info.device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    entry, digest = _encoder_identity(name, kwargs)
    if weights is not None:
        digest = sha256_file(weights)
    entry["width"] = int(encoder.width)
    _start_export(cfg, run, ModelConfig(head=HeadConfig(embed_dim=int(encoder.width)), encoder=name), digest)
    if run.is_main:
        (run.dir / ENCODER_JSON).write_text(json.dumps(entry, indent=1), encoding="utf-8")

    def write(r: ScanRecord, split: str, tmp: Path) -> None:
        vol = load_volume(r, intensity=cfg.data.intensity)
        with torch.no_grad():
            x, affine = encoder.preprocess_volume(vol.array, vol.affine)
            res = encoder(x.to(run.info.device))
        grid = encoder.patch_grid(res, tuple(x.shape[2:]), affine)
        meta = {"VolumeName": r.name, "split": split, "encoder": name}
        save_embeddings(tmp, res.tokens[0].float().cpu(), grid, meta=meta)

    return _export_scans(cfg, run, f"{name} features", write)


def export_embeddings(cfg: EmbeddingsConfig) -> Path:
    """Export embeddings of the configured splits; returns the manifest path.

    ``export.encoder`` other than ``swinunetr`` exports that frozen encoder's tokens
    (:func:`export_encoder_features`).
    """
    if cfg.export.encoder not in (None, "swinunetr"):
        return export_encoder_features(cfg)
    e = cfg.export
    run = _export_run(cfg)
    mcfg = segmentation_model_config(cfg)
    pcfg = mcfg.preprocess
    cache_dir = cfg.data.cache("segmentation")
    model = load_backbone(cfg, mcfg, run.info.device)
    remap = load_remap(cfg.data.remap)
    options = SlidingOptions(sw_batch_size=e.sw_batch_size, amp=e.amp)
    _start_export(cfg, run, mcfg, _backbone_path(cfg))

    def write(r: ScanRecord, split: str, tmp: Path) -> None:
        item = cached_preprocess(r, pcfg, cache_dir, remap=remap, intensity=cfg.data.intensity, with_labels=False)
        res = sliding_segment(
            item["image"][0],
            lambda x: forward_with_features(model, x),
            pcfg.patch_size,
            pcfg.overlap,
            pcfg.sigma_scale,
            affine=item["affine"],
            options=options,
            device=run.info.device,
        )
        save_embeddings(tmp, res.embeddings, res.grid, meta={"VolumeName": r.name, "split": split})

    return _export_scans(cfg, run, "embeddings", write)


def read_manifest(directory: Path, split: Optional[str] = None) -> list[dict]:
    """Rows of an embedding manifest (optionally one split), with absolute embedding paths."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ConfigError(f"embedding manifest {path} does not exist (run export-embeddings first)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        for key in ("split", "VolumeName", "embedding", "labels", "report"):
            if key not in row:
                raise ConfigError(f"{path}: a row has no '{key}'")
        row["embedding_path"] = str(directory / row["embedding"])
    return [r for r in rows if split is None or r["split"] == split]
