"""CT-RATE's RadBERT report classifier as a report labeler, from files the user supplies.

CT-RATE's label CSVs (``multi_abnormality_labels/*_predicted_labels.csv``) were made by a
classifier released with the dataset (the CT-CLIP repository's ``text_classifier``): a RadBERT
encoder (``zzxslp/RadBERT-RoBERTa-4m``) whose pooled output feeds one linear layer with 18
outputs, trained with a sigmoid per finding; a report is positive for a finding when its sigmoid
exceeds 0.5. Papers on CT-RATE label generated and reference reports with it to compute
clinical efficacy, so CE numbers are comparable with theirs only when this labeler is used.

This module never downloads anything: the user gives

* ``checkpoint``: the classifier's PyTorch state dict (keys ``model.*`` for the encoder and
  ``classifier.weight`` / ``classifier.bias``; a ``module.`` prefix from DataParallel and a
  ``{"state_dict": ...}`` wrapper are accepted);
* ``tokenizer``: a folder holding the encoder's ``config.json`` and its tokenizer files
  (``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` for RoBERTa, or ``vocab.txt`` for BERT),
  e.g. a local copy of the RadBERT model repository.

Every missing piece is named in a :class:`~neuroradix.errors.ConfigError`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

from neuroradix.errors import ConfigError
from neuroradix_train.data.findings import FINDINGS

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",))
"""Any one of these sets of files makes a usable tokenizer folder."""


class RadBertClassifier(nn.Module):
    """CT-RATE's classifier layout: a transformer encoder, its pooled output, one linear layer.

    Parameters
    ----------
    config:
        The encoder's configuration (read from ``config.json``).
    n_classes:
        Number of findings (18 for CT-RATE).
    """

    def __init__(self, config: PretrainedConfig, n_classes: int = len(FINDINGS)) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        self.model = AutoModel.from_config(config)
        self.classifier = nn.Linear(config.hidden_size, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)``."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return self.classifier(out.pooler_output)


def _check_tokenizer_dir(folder: Path) -> None:
    if not folder.is_dir():
        raise ConfigError(
            f"radbert tokenizer folder {folder} does not exist (it must hold config.json and the "
            "tokenizer files of the classifier's encoder)"
        )
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(all((folder / f).is_file() for f in group) for group in TOKENIZER_FILES):
        missing.append("tokenizer files (one of: " + "; ".join(" + ".join(g) for g in TOKENIZER_FILES) + ")")
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise ConfigError(f"radbert tokenizer folder {folder} lacks {' and '.join(missing)}; it holds {present}")


def _state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    if not checkpoint.is_file():
        raise ConfigError(
            f"radbert checkpoint {checkpoint} does not exist (CT-RATE's classifier weights, a .pt state dict)"
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one error that names it
        raise ConfigError(f"radbert checkpoint {checkpoint} is not a readable PyTorch state dict: {exc}") from exc
    for key in ("state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"radbert checkpoint {checkpoint} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class RadBERTLabeler:
    """CT-RATE's RadBERT classifier as a :class:`~neuroradix_train.evaluation.labeler.Labeler` (``name == "radbert"``).

    Parameters
    ----------
    checkpoint:
        The classifier's state dict (``.pt``).
    tokenizer:
        Folder with ``config.json`` and the tokenizer files of its encoder.
    device:
        Torch device.
    threshold:
        A finding is positive when its sigmoid exceeds this (CT-RATE: 0.5).
    max_length, batch_size:
        Tokens per report (longer reports are truncated; 512 as in CT-RATE) and reports per batch.

    Raises
    ------
    ConfigError
        A missing or unreadable file, named; weights that do not fit the encoder in ``config.json``.
    """

    name = "radbert"

    def __init__(
        self,
        checkpoint: Path,
        tokenizer: Path,
        *,
        device: str = "cpu",
        threshold: float = 0.5,
        max_length: int = 512,
        batch_size: int = 16,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        if max_length < 8 or batch_size < 1:
            raise ValueError(f"max_length ({max_length}) must be >= 8 and batch_size ({batch_size}) >= 1")
        checkpoint, tokenizer = Path(checkpoint), Path(tokenizer)
        _check_tokenizer_dir(tokenizer)
        state = _state_dict(checkpoint)
        config = AutoConfig.from_pretrained(tokenizer, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        self.model = RadBertClassifier(config, len(FINDINGS))
        try:
            result = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch
            raise ConfigError(
                f"radbert checkpoint {checkpoint} does not fit the encoder in {tokenizer / 'config.json'}: "
                f"{str(exc).splitlines()[-1].strip()}"
            ) from exc
        unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
        if result.missing_keys or unexpected:
            raise ConfigError(
                f"radbert checkpoint {checkpoint} does not fit the classifier: missing "
                f"{result.missing_keys[:5]}, unexpected {unexpected[:5]}"
            )
        self.model.eval().to(device)
        self.device = device
        self.threshold = threshold
        self.max_length = max_length
        self.batch_size = batch_size
        logger.info(
            "radbert labeler loaded (%s, %d parameters)",
            config.model_type,
            sum(p.numel() for p in self.model.parameters()),
        )

    @torch.no_grad()
    def probabilities(self, texts: Iterable[str]) -> np.ndarray:
        """Sigmoid outputs ``(n, 18)`` for the reports."""
        texts = [t or "" for t in texts]
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            logits = self.model(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(FINDINGS)), dtype=np.float32)

    def label_many(self, texts: Iterable[str]) -> np.ndarray:
        """A ``(n, 18)`` 0/1 int array in :data:`FINDINGS` order."""
        return (self.probabilities(texts) > self.threshold).astype(np.int64)

    def label(self, text: str) -> np.ndarray:
        """A ``(18,)`` 0/1 int array for one report."""
        return self.label_many([text])[0]
