"""The typed configuration of each training stage: frozen pydantic models, validated when loaded.

:func:`neuroradix_train.config.load_config` merges the YAML files and ``--set`` overrides and hands
the result to :func:`parse_stage_config`, which builds one of the stage models below; a wrong type,
an unknown key or a bad model section fails there with the key named (``config key 'train.lr':
...``), before any work starts. The YAML files under ``configs/`` hold the default values; the
models here hold their types.

A setting that may stay empty until a stage needs it (``data.root`` for ``--print-config``, say)
is ``Optional`` here and asked for with :func:`require`, which names the key when it is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from neuroradix.errors import ConfigError
from neuroradix.models.config import ModelConfig
from neuroradix.models.encoders.vit import ViTConfig

T = TypeVar("T")


def require(value: Optional[T], key: str) -> T:
    """``value`` itself, or a :class:`ConfigError` naming ``key`` when it is empty (``None`` or ``""``)."""
    if value is None or value == "":
        raise ConfigError(f"config key {key!r} must be set (e.g. --set {key}=...)")
    return value


def model_config(section: dict[str, Any]) -> ModelConfig:
    """A ``model`` section (preprocess / backbone / head) as a validated ``ModelConfig``.

    The head's ``embed_dim`` follows the backbone (``24 * feature_size``) unless it is given.
    """
    section = dict(section)
    fs = (section.get("backbone") or {}).get("feature_size", 48)
    head = dict(section.get("head") or {})
    head.setdefault("embed_dim", 24 * int(fs))  # keep the head consistent with the backbone
    section["head"] = head
    try:
        return ModelConfig.from_dict(section)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model config: {exc}") from exc


class Section(BaseModel):
    """A configuration section: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- data


class ScanData(Section):
    """Where the scans are (a CT-RATE-layout folder) and how many of each split to use."""

    root: Optional[str]
    intensity: Literal["auto", "raw", "hu"]
    cache_dir: Optional[str]
    max_train_scans: Optional[int]
    max_valid_scans: Optional[int]

    def root_dir(self) -> Path:
        """``data.root``, required."""
        return Path(require(self.root, "data.root"))

    def cache(self, stage: str) -> Path:
        """``data.cache_dir``, by default ``<root>/cache/<stage>``."""
        return Path(self.cache_dir) if self.cache_dir else self.root_dir() / "cache" / stage

    def limit(self, records: list[T], split: str) -> list[T]:
        """The first ``max_<split>_scans`` of ``records`` (all of them when unset or for another split)."""
        n = getattr(self, f"max_{split}_scans", None)
        return records[: int(n)] if n else records


class RemapData(ScanData):
    """Scans whose segmentations go through a remap table (``data.remap``) to the 43 classes."""

    remap: str


class SegmentationData(RemapData):
    """The segmentation stage's data section."""

    train_split: str
    val_split: str


class ContrastiveData(ScanData):
    """The contrastive stage's data section."""

    train_split: str
    val_split: str


class HeadData(Section):
    """The head stage's data section: an embeddings export and its splits."""

    embeddings: Optional[str]
    train_split: str
    val_split: str

    def embeddings_dir(self) -> Path:
        """``data.embeddings``, required."""
        return Path(require(self.embeddings, "data.embeddings"))


class EvaluateData(RemapData):
    """The evaluate command's data section."""

    embeddings: Optional[str]
    threshold_split: str


# --------------------------------------------------------------------------- training loop


class TrainConfig(Section):
    """The ``train`` section every trained stage shares (the loop of :mod:`neuroradix_train.stages.trainer`)."""

    out_dir: Optional[str]
    device: str
    seed: int
    epochs: int
    max_steps: Optional[int]
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    cosine: bool
    grad_clip: Optional[float]
    amp: bool
    num_workers: int
    threads: Optional[int]
    tensorboard: bool
    ckpt_every_steps: Optional[int]
    val_every_epochs: int

    def run_dir(self) -> Path:
        """``train.out_dir``, required."""
        return Path(require(self.out_dir, "train.out_dir"))


class SegmentationTrain(TrainConfig):
    """The segmentation stage's loop, crops and loss."""

    num_samples: int
    pos: float
    neg: float
    dice_classes: Literal["all", "present"]


class HeadTrain(TrainConfig):
    """The head stage's loop, tokenizer and validation-time generation."""

    vocab_size: int
    generate_on_val: bool
    max_new_tokens: Optional[int]


class ContrastiveTrain(TrainConfig):
    """The contrastive stage's loop and tokenizer."""

    vocab_size: int


class SegmentationAugment(Section):
    """The segmentation stage's augmentation (MONAI dictionary transforms)."""

    flip_prob: float
    rot90_prob: float
    rot90_max_k: int
    affine_prob: float
    affine_rotate: float
    affine_scale: float
    noise_prob: float
    noise_std: float
    contrast_prob: float
    contrast_gamma: tuple[float, float]
    dropout_prob: float
    dropout_holes: int
    dropout_size: int


class ShiftAugment(Section):
    """The contrastive stage's augmentation: a random shift of each training scan."""

    shift_voxels: int


class ExportSection(Section):
    """The embeddings stage's ``export`` section."""

    backbone: Optional[str]
    out_dir: Optional[str]
    splits: list[str]
    device: str
    amp: bool
    sw_batch_size: int
    threads: Optional[int]
    encoder: Optional[str]
    encoder_kwargs: dict[str, Any]
    encoder_weights: Optional[str]


class EvaluateSection(Section):
    """The evaluate command's ``evaluate`` section."""

    segmentation: Optional[str]
    head: Optional[str]
    split: str
    out_dir: Optional[str]
    device: str
    amp: bool
    generate: bool
    protocols: list[str]
    n_bootstrap: int
    labeler: Literal["rule", "radbert"]
    radbert_checkpoint: Optional[str]
    radbert_tokenizer: Optional[str]


class ZeroShotSection(Section):
    """The contrastive stage's zero-shot prompts: ``[present, not present]`` pairs."""

    templates: list[tuple[str, str]]
    prompts: dict[str, tuple[str, str]]


class ContrastiveModelSection(Section):
    """The contrastive model: the ViT (``ViTConfig``), the text BERT's keyword arguments, the shared space."""

    vit: dict[str, Any]
    text: dict[str, Any]
    max_report_tokens: int
    embed_dim: int
    temperature: float
    learn_temperature: bool

    def vit_config(self) -> ViTConfig:
        """``model.vit`` as a ``ViTConfig``."""
        try:
            return ViTConfig.from_dict(dict(self.vit))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model.vit: {exc}") from exc


# --------------------------------------------------------------------------- stages


class SegmentationConfig(Section):
    """``segmentation.yaml``: the SwinUNETR segmentation backbone."""

    model: dict[str, Any]
    data: SegmentationData
    train: SegmentationTrain
    augment: SegmentationAugment

    @model_validator(mode="after")
    def _model_is_valid(self) -> SegmentationConfig:
        self.network()
        return self

    def network(self) -> ModelConfig:
        """The ``model`` section as a ``ModelConfig``."""
        return model_config(self.model)


class EmbeddingsConfig(Section):
    """``embeddings.yaml``: patch embeddings (or a frozen encoder's tokens) of every scan."""

    model: dict[str, Any]
    data: RemapData
    export: ExportSection

    def out_dir(self) -> Path:
        """``export.out_dir``, required."""
        return Path(require(self.export.out_dir, "export.out_dir"))


class HeadTrainingConfig(Section):
    """``head.yaml``: the multitask head on an embeddings export."""

    model: dict[str, Any]
    data: HeadData
    train: HeadTrain


class ContrastiveConfig(Section):
    """``contrastive.yaml``: the 3D ViT trained against the reports."""

    model: ContrastiveModelSection
    data: ContrastiveData
    augment: ShiftAugment
    train: ContrastiveTrain
    zero_shot: ZeroShotSection

    @model_validator(mode="after")
    def _vit_is_valid(self) -> ContrastiveConfig:
        self.model.vit_config()
        return self


class EvaluateConfig(Section):
    """``evaluate.yaml``: Dice of a segmentation run and/or the metrics of a head run."""

    data: EvaluateData
    evaluate: EvaluateSection


StageConfig = SegmentationConfig | EmbeddingsConfig | HeadTrainingConfig | ContrastiveConfig | EvaluateConfig

STAGE_CONFIGS: dict[str, type[Section]] = {
    "segmentation": SegmentationConfig,
    "embeddings": EmbeddingsConfig,
    "head": HeadTrainingConfig,
    "contrastive": ContrastiveConfig,
    "evaluate": EvaluateConfig,
}
"""Each stage's name (its shipped config ``configs/<name>.yaml``) and its typed configuration."""


def _message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        got = f" (got {err['input']!r})" if err["type"] not in ("missing", "extra_forbidden") else ""
        parts.append(f"config key {key!r}: {err['msg']}{got}")
    return "; ".join(parts)


def parse_stage_config(stage: str, data: dict[str, Any]) -> StageConfig:
    """The merged mapping ``data`` as the typed configuration of ``stage`` (a name of :data:`STAGE_CONFIGS`).

    Raises
    ------
    ConfigError
        On a missing, unknown or mistyped key (named in the message) or an invalid model section.
    """
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; known: {sorted(STAGE_CONFIGS)}")
    try:
        return STAGE_CONFIGS[stage].model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        raise ConfigError(f"{stage} config: {_message(exc)}") from exc


def as_dict(cfg: Section) -> dict[str, Any]:
    """A configuration as plain YAML/JSON values (what ``config.yaml`` and checkpoints hold)."""
    return cfg.model_dump(mode="json")
