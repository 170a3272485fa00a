"""Stage 2: patch embeddings of every scan, written once for the head's training.

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
(``[N, width]``, one per cell of its token grid) in the same file format, and no stage-1 backbone is
needed.  ``model_config.json`` then names the encoder and the head's ``embed_dim`` (its width), and
``encoder.json`` holds the release manifest's ``encoder`` entry (for a pretrained one: package,
version, sha256, licence, source).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import torch

from neuroradix.errors import ConfigError
from neuroradix.models.backbone import build_backbone, forward_with_features
from neuroradix.models.config import HeadConfig, ModelConfig
from neuroradix.models.embeddings import save_embeddings
from neuroradix.models.encoders import build_encoder
from neuroradix.models.pretrained import PRETRAINED
from neuroradix.models.remap import load_remap
from neuroradix.models.sliding import SlidingOptions, sliding_segment
from neuroradix.weights import pretrained_encoder_entry, sha256_file
from neuroradix_train.config import require, save_config
from neuroradix_train.data.dataset import load_records, load_volume
from neuroradix_train.data.preprocess import cached_preprocess
from neuroradix_train.stages import distributed as D
from neuroradix_train.stages.common import model_config, progress, set_threads

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
BACKBONE_SHA = "backbone.sha256"
ENCODER_JSON = "encoder.json"


def _backbone_path(cfg: dict) -> Path:
    src = Path(require(cfg, "export.backbone"))
    return src / "backbone.pt" if src.is_dir() else src


def _claim_export_dir(out: Path, backbone: Path | str) -> None:
    """Record which backbone an export folder holds; refuse to mix embeddings of two backbones.

    Files already written are skipped on a rerun (resuming an interrupted export), which is only
    right when they came from the same weights.  ``backbone`` is the stage-1 weights file, or the
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


def load_backbone(cfg: dict, mcfg, device):
    """The stage-1 backbone: ``export.backbone`` (a ``backbone.pt`` state dict or a stage-1 run folder)."""
    path = _backbone_path(cfg)
    if not path.is_file():
        raise ConfigError(f"stage-1 backbone {path} does not exist (run train-seg first)")
    model = build_backbone(mcfg.backbone)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def stage1_model_config(cfg: dict):
    """The model config of the stage-1 run named by ``export.backbone`` (its ``model_config.json``),
    else the ``model`` section of this config."""
    src = Path(require(cfg, "export.backbone"))
    path = (src if src.is_dir() else src.parent) / "model_config.json"
    if path.is_file():
        return ModelConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    return model_config(cfg)


def _encoder_weights(e: dict) -> Optional[Path]:
    """``export.encoder_weights``: a state dict file or a folder holding ``encoder.pt`` (e.g. a contrastive run)."""
    value = e.get("encoder_weights")
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


def _finish_export(out: Path, lines: list[dict], is_main: bool, what: str) -> Path:
    """Wait for every rank, write the manifest (rank 0) and end the process group; returns its path."""
    D.barrier()
    manifest = out / MANIFEST
    if is_main:
        manifest.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
        log.info("%s of %d scans in %s", what, len(lines), out)
    D.teardown()
    return manifest


def export_encoder_features(cfg: dict) -> Path:
    """Stage 2 on a frozen encoder (``export.encoder``): tokens of every scan; returns the manifest path."""
    e = cfg["export"]
    set_threads(e.get("threads"))
    info = D.setup(e["device"])
    name = str(e["encoder"])
    kwargs = dict(e.get("encoder_kwargs") or {})
    root = require(cfg, "data.root")
    out = Path(require(cfg, "export.out_dir"))
    encoder = build_encoder(name, **kwargs)
    weights = _encoder_weights(e)
    if weights is not None:  # a trained encoder (the contrastive ViT): its state dict, strictly
        encoder.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    encoder = encoder.to(info.device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    entry, digest = _encoder_identity(name, kwargs)
    if weights is not None:
        digest = sha256_file(weights)
    entry["width"] = int(encoder.width)
    mcfg = ModelConfig(head=HeadConfig(embed_dim=int(encoder.width)), encoder=name)
    if info.is_main:
        _claim_export_dir(out, digest)
        save_config(cfg, out / "config.yaml")
        (out / "model_config.json").write_text(json.dumps(mcfg.to_dict(), indent=1), encoding="utf-8")
        (out / ENCODER_JSON).write_text(json.dumps(entry, indent=1), encoding="utf-8")
    D.barrier()
    lines = []
    for split in e["splits"]:
        records = load_records(root, split, require_labels=False)
        limit = cfg["data"].get(f"max_{split}_scans")
        records = records[: int(limit)] if limit else records
        for i, r in enumerate(progress(records, info.is_main, desc=f"{name} {split}")):
            rel = Path(split) / f"{r.stem}.pt"
            if i % info.world_size == info.rank and not (out / rel).is_file():
                vol = load_volume(r, intensity=cfg["data"]["intensity"])
                with torch.no_grad():
                    x, affine = encoder.preprocess_volume(vol.array, vol.affine)
                    res = encoder(x.to(info.device))
                grid = encoder.patch_grid(res, tuple(x.shape[2:]), affine)
                tmp = out / rel.with_suffix(".tmp")
                meta = {"VolumeName": r.name, "split": split, "encoder": name}
                save_embeddings(tmp, res.tokens[0].float().cpu(), grid, meta=meta)
                tmp.replace(out / rel)
            lines.append(_manifest_entry(split, r, rel))
    return _finish_export(out, lines, info.is_main, f"{name} features")


def export_embeddings(cfg: dict) -> Path:
    """Export embeddings of the configured splits; returns the manifest path.

    ``export.encoder`` other than ``swinunetr`` exports that frozen encoder's tokens
    (:func:`export_encoder_features`).
    """
    if cfg["export"].get("encoder") not in (None, "swinunetr"):
        return export_encoder_features(cfg)
    e = cfg["export"]
    set_threads(e.get("threads"))
    info = D.setup(e["device"])
    mcfg = stage1_model_config(cfg)
    pcfg = mcfg.preprocess
    root = require(cfg, "data.root")
    out = Path(require(cfg, "export.out_dir"))
    cache_dir = Path(cfg["data"].get("cache_dir") or Path(root) / "cache" / "stage1")
    model = load_backbone(cfg, mcfg, info.device)
    remap = load_remap(cfg["data"]["remap"])
    options = SlidingOptions(sw_batch_size=e["sw_batch_size"], amp=e["amp"])
    if info.is_main:
        _claim_export_dir(out, _backbone_path(cfg))
        save_config(cfg, out / "config.yaml")
        (out / "model_config.json").write_text(json.dumps(mcfg.to_dict(), indent=1), encoding="utf-8")
    D.barrier()
    lines = []
    for split in e["splits"]:
        records = load_records(root, split, require_labels=False)
        limit = cfg["data"].get(f"max_{split}_scans")
        records = records[: int(limit)] if limit else records
        for i, r in enumerate(progress(records, info.is_main, desc=f"embed {split}")):
            rel = Path(split) / f"{r.stem}.pt"
            if i % info.world_size == info.rank and not (out / rel).is_file():
                item = cached_preprocess(
                    r, pcfg, cache_dir, remap=remap, intensity=cfg["data"]["intensity"], with_labels=False
                )
                res = sliding_segment(
                    item["image"][0],
                    lambda x: forward_with_features(model, x),
                    pcfg.patch_size,
                    pcfg.overlap,
                    pcfg.sigma_scale,
                    affine=item["affine"],
                    options=options,
                    device=info.device,
                )
                tmp = out / rel.with_suffix(".tmp")
                save_embeddings(tmp, res.embeddings, res.grid, meta={"VolumeName": r.name, "split": split})
                tmp.replace(out / rel)
            lines.append(_manifest_entry(split, r, rel))
    return _finish_export(out, lines, info.is_main, "embeddings")


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
