"""Publish trained runs as a ``weights/`` release the node loads (:mod:`neuroradix.models.release`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from neuroradix.errors import ConfigError
from neuroradix.models.config import HeadConfig, ModelConfig
from neuroradix.models.release import load_release, make_test_release, write_release

logger = logging.getLogger(__name__)

CTRATE = {
    "name": "CT-RATE",
    "licence": "CC-BY-NC-SA-4.0",
    "url": "https://huggingface.co/datasets/ibrahimhamamci/CT-RATE",
}


def publish_release(
    backbone_run: Path,
    head_run: Path,
    out: Path,
    *,
    version: str,
    dataset: str = "CT-RATE",
    licence: str = "CC-BY-NC-SA-4.0",
    untrained: bool = False,
) -> Path:
    """Combine a stage-1 run (``backbone.pt``) and a stage-3 run (``head.pt``, ``tokenizer/``,
    ``model_config.json``, ``thresholds.json``) into a verified release folder.

    The head run's model config (which carries the stage-1 preprocessing and backbone) is the
    release's config; a backbone whose state dict does not fit it is refused. The release is
    loaded back through :func:`neuroradix.models.release.load_release` before returning.
    """
    backbone_run, head_run = Path(backbone_run), Path(head_run)
    for p in (
        backbone_run / "backbone.pt",
        head_run / "head.pt",
        head_run / "model_config.json",
        head_run / "tokenizer" / "tokenizer.json",
    ):
        if not p.is_file():
            raise ConfigError(f"{p} is missing")
    mcfg = ModelConfig.from_dict(json.loads((head_run / "model_config.json").read_text(encoding="utf-8")))
    b_cfg_path = backbone_run / "model_config.json"
    if b_cfg_path.is_file():
        b_cfg = ModelConfig.from_dict(json.loads(b_cfg_path.read_text(encoding="utf-8")))
        if b_cfg.backbone != mcfg.backbone or b_cfg.preprocess != mcfg.preprocess:
            raise ConfigError(f"{backbone_run} was trained with another preprocessing/backbone than {head_run} expects")
    training_data = [CTRATE] if dataset == "CT-RATE" else [{"name": dataset, "licence": licence}]
    notes = ""
    thr = head_run / "thresholds.json"
    if thr.is_file():
        notes = "validation thresholds: " + thr.read_text(encoding="utf-8").replace("\n", " ")
    write_release(
        out,
        mcfg,
        {
            "backbone": torch.load(backbone_run / "backbone.pt", map_location="cpu", weights_only=True),
            "head": torch.load(head_run / "head.pt", map_location="cpu", weights_only=True),
        },
        head_run / "tokenizer",
        version=version,
        untrained=untrained,
        training_data=training_data,
        licence=licence,
        notes=notes,
    )
    release = load_release(out, allow_untrained=untrained)
    release.build_models()  # the state dicts fit the configured modules (strict)
    logger.info("release %s written to %s", version, out)
    return Path(out)


def untrained_encoder_release(
    encoder: str,
    out: Path,
    *,
    version: str = "0.0.0-untrained",
    head: Optional[HeadConfig] = None,
    seed: int = 0,
    verify_weights: bool = True,
) -> Path:
    """A release with an UNTRAINED (random) head on a pinned pretrained encoder (``"merlin"``, ``"astra"``).

    For running the whole node path (``neuroradix analyze --weights <release> --allow-untrained``)
    on a pretrained encoder before a head is trained on it: the manifest names the encoder with its
    package, version, sha256, licence and source; the node marks every output UNTRAINED.  ``head``
    defaults to the production head (``HeadConfig()``); its ``embed_dim`` becomes the encoder's width.
    ``verify_weights`` builds the models once (needs the ``encoders`` extra installed).
    """
    cfg = ModelConfig(head=head, encoder=encoder) if head is not None else ModelConfig(encoder=encoder)
    make_test_release(
        out,
        cfg,
        seed=seed,
        encoder=encoder,
        version=version,
        notes=(
            f"UNTRAINED head (random weights) on the pretrained {encoder} encoder; test output only. "
            "Preprocessing follows Merlin's published transforms (neuroradix.models.encoders.i3resnet)."
        ),
    )
    release = load_release(out, allow_untrained=True, encoder=encoder)
    if verify_weights:
        release.build_models()  # pinned encoder weights + the head's state dict (strict)
    logger.info("untrained %s release %s written to %s", encoder, version, out)
    return Path(out)
