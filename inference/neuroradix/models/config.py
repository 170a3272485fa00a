"""Typed, validated configuration of the deep-learning model (preprocessing, backbone, head).

Every number that changes what the network sees or computes lives here and is written into a
weights release (:mod:`neuroradix.models.release`), so a checkpoint is never used with a different
preprocessing than the one it was trained with.  Each dataclass is frozen, checks itself in
``__post_init__`` (``ValueError`` naming the field) and round-trips through ``to_dict`` /
``from_dict``; ``from_dict`` refuses unknown keys so a typo in a manifest is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "PreprocessConfig",
    "BackboneConfig",
    "HeadConfig",
    "ModelConfig",
    "default_bart_config",
    "diff_dicts",
    "tiny_config",
]

_ORIENTATION_LETTERS = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


def _from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def _to_dict(obj: Any) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = _to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[f.name] = value
    return out


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT volume becomes the network's input grid.

    Parameters
    ----------
    hu_window:
        ``(low, high)`` Hounsfield units; values are clipped to it and mapped linearly to
        ``output_range``.
    output_range:
        Range of the normalised intensities.
    orientation:
        Three letters, one per array axis ``[slice, row, column]`` of the network grid, saying
        towards which patient direction the index grows (e.g. ``"SPL"``: slices towards
        superior, rows towards posterior, columns towards the patient's left).  The volume is
        permuted and flipped to it (no interpolation).  ``None`` keeps the source order.
    target_spacing:
        Voxel size in mm of the network grid along its three axes, or ``None`` to use
        ``target_shape`` instead.
    target_shape:
        Fixed grid size (the original design's 512^3 resize), used when ``target_spacing`` is
        ``None``.
    patch_size:
        Edge of the cubic sliding window (the local channel); a multiple of 32.
    global_size:
        Edge of the whole-scan resize appended as the second channel; equals ``patch_size``.
    overlap:
        Fractional overlap of neighbouring windows, ``0 <= overlap < 1``.
    sigma_scale:
        Gaussian blending sigma as a fraction of the window size.
    """

    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    output_range: tuple[float, float] = (0.0, 1.0)
    orientation: Optional[str] = "SPL"
    target_spacing: Optional[tuple[float, float, float]] = (1.5, 1.5, 1.5)
    target_shape: Optional[tuple[int, int, int]] = None
    patch_size: int = 96
    global_size: int = 96
    overlap: float = 0.25
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.hu_window)
        if not lo < hi:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        a, b = (float(v) for v in self.output_range)
        if not a < b:
            raise ValueError(f"output_range must be increasing, got {self.output_range}")
        if self.orientation is not None:
            o = str(self.orientation).upper()
            if (
                len(o) != 3
                or any(c not in _ORIENTATION_LETTERS for c in o)
                or len({_ORIENTATION_LETTERS[c] for c in o}) != 3
            ):
                raise ValueError(f"orientation must be three letters from L/R, P/A, S/I, got {self.orientation!r}")
            object.__setattr__(self, "orientation", o)
        if (self.target_spacing is None) == (self.target_shape is None):
            raise ValueError("give exactly one of target_spacing and target_shape")
        if self.target_spacing is not None:
            sp = tuple(float(s) for s in self.target_spacing)
            if len(sp) != 3 or min(sp) <= 0:
                raise ValueError(f"target_spacing must be three positive mm values, got {self.target_spacing}")
            object.__setattr__(self, "target_spacing", sp)
        if self.target_shape is not None:
            sh = tuple(int(s) for s in self.target_shape)
            if len(sh) != 3 or min(sh) < 1:
                raise ValueError(f"target_shape must be three positive ints, got {self.target_shape}")
            object.__setattr__(self, "target_shape", sh)
        if not isinstance(self.patch_size, int) or self.patch_size < 64 or self.patch_size % 32:
            raise ValueError(f"patch_size must be a multiple of 32 and at least 64, got {self.patch_size!r}")
        if self.global_size != self.patch_size:
            raise ValueError(
                f"global_size ({self.global_size}) must equal patch_size ({self.patch_size}): "
                "the global channel is appended to every patch"
            )
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not float(self.sigma_scale) > 0:
            raise ValueError(f"sigma_scale must be positive, got {self.sigma_scale}")
        object.__setattr__(self, "hu_window", (lo, hi))
        object.__setattr__(self, "output_range", (a, b))

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        return _from_dict(cls, data, "preprocess")


@dataclass(frozen=True)
class BackboneConfig:
    """MONAI ``SwinUNETR`` hyper-parameters (2 input channels: local patch + global context).

    ``out_channels`` counts the background: the 43 chest-CT classes need 44 output channels
    (channel 0 = background, channel k = label k of ``chest-ct-43``).
    """

    in_channels: int = 2
    out_channels: int = 44
    feature_size: int = 48
    use_checkpoint: bool = False
    window_size: int = 7  # Swin attention window (MONAI's default); small configs use 4 for speed

    def __post_init__(self) -> None:
        if self.in_channels != 2:
            raise ValueError(f"in_channels must be 2 (local patch + global resize), got {self.in_channels}")
        if not isinstance(self.out_channels, int) or self.out_channels < 2:
            raise ValueError(f"out_channels must be an int >= 2, got {self.out_channels!r}")
        if not isinstance(self.feature_size, int) or self.feature_size < 12 or self.feature_size % 12:
            raise ValueError(f"feature_size must be a positive multiple of 12, got {self.feature_size!r}")
        if not isinstance(self.window_size, int) or not 2 <= self.window_size <= 7:
            raise ValueError(f"window_size must be an int from 2 to 7, got {self.window_size!r}")

    @property
    def embed_dim(self) -> int:
        """Width of a pooled patch embedding: encoder1/2/3/4/10 = (1+1+2+4+16) x feature_size."""
        return 24 * self.feature_size

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BackboneConfig:
        return _from_dict(cls, data, "backbone")


def default_bart_config() -> dict:
    """A BART-base-sized decoder (encoder kept minimal: it is bypassed by ``encoder_outputs``)."""
    return {
        "encoder_layers": 1,
        "decoder_layers": 6,
        "encoder_attention_heads": 12,
        "decoder_attention_heads": 12,
        "encoder_ffn_dim": 768,
        "decoder_ffn_dim": 3072,
        "max_position_embeddings": 1024,
        "dropout": 0.1,
    }


@dataclass(frozen=True)
class HeadConfig:
    """The multitask head: bridge, mixture-of-experts classifier and BART report decoder.

    Parameters
    ----------
    embed_dim:
        Width of the patch embeddings (``24 * feature_size``; checked by :class:`ModelConfig`).
    d_model:
        Width of the bridge and of BART.
    num_cls_queries:
        Classification queries; one per output (18 findings + abnormal), so that each
        finding's attention map is the attention of its own query.
    num_gen_queries:
        Queries whose outputs are BART's encoder states.
    lambda_gen:
        Weight of the report losses: ``loss = cls + lambda_gen * (bart + coverage_weight * cov)``.
    uncertainty_weighting:
        Learn the task weights instead (Kendall et al. 2018).
    soft_prompt, prompt_top_k, prompt_threshold:
        Prefix the report with ``"Findings: a, b. Report:"`` built from the top-k findings
        whose predicted probability reaches the threshold.
    prompt_from_labels:
        While training, build the soft prompt from the true findings (teacher forcing of the
        prompt); at inference it always comes from the classifier. With predicted prompts the
        decoder learned to ignore them on the smoke phantoms (reports missed 6 of 8
        consolidations the classifier had found).
    standardize_embeddings:
        Z-score each embedding feature with the training set's mean and std (buffers of the
        bridge, stored with the weights). Raw pooled encoder features differ in scale by orders
        of magnitude between stages; on the smoke phantoms the head learned only the base rates
        without this (macro AUROC 0.62, against 0.86 for a linear probe on standardised means).
    bart:
        Keyword arguments of ``transformers.BartConfig`` (``d_model`` and the token ids come
        from here and from the tokenizer), ignored when ``bart_pretrained`` names a folder.
    bart_pretrained:
        A local folder with a pretrained BART (never a hub id).
    """

    embed_dim: int = 1152
    d_model: int = 768
    num_heads: int = 8
    num_cls_queries: int = 19
    num_gen_queries: int = 32
    num_findings: int = 18
    num_experts: int = 4
    dropout: float = 0.1
    gat_heads: int = 4
    lambda_gen: float = 0.2
    uncertainty_weighting: bool = False
    coverage_weight: float = 1.0
    soft_prompt: bool = True
    standardize_embeddings: bool = False
    prompt_from_labels: bool = True
    prompt_top_k: int = 3
    prompt_threshold: float = 0.5
    max_report_tokens: int = 256
    bart: dict = field(default_factory=default_bart_config)
    bart_pretrained: Optional[str] = None

    def __post_init__(self) -> None:
        for name in (
            "embed_dim",
            "d_model",
            "num_heads",
            "num_cls_queries",
            "num_gen_queries",
            "num_findings",
            "num_experts",
            "gat_heads",
            "max_report_tokens",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.d_model % self.gat_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by gat_heads ({self.gat_heads})")
        if self.num_cls_queries != self.num_outputs:
            raise ValueError(
                f"num_cls_queries ({self.num_cls_queries}) must equal num_findings + 1 ({self.num_outputs}): "
                "each output has its own query"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if float(self.lambda_gen) < 0 or float(self.coverage_weight) < 0:
            raise ValueError("lambda_gen and coverage_weight must be non-negative")
        if not 0 <= self.prompt_top_k <= self.num_findings:
            raise ValueError(f"prompt_top_k must be in [0, {self.num_findings}], got {self.prompt_top_k}")
        if not 0.0 <= float(self.prompt_threshold) <= 1.0:
            raise ValueError(f"prompt_threshold must be in [0, 1], got {self.prompt_threshold}")
        if not isinstance(self.bart, dict):
            raise ValueError("bart must be a dict of BartConfig keyword arguments")
        reserved = {
            "d_model",
            "vocab_size",
            "pad_token_id",
            "bos_token_id",
            "eos_token_id",
            "decoder_start_token_id",
            "attn_implementation",
        }
        clash = sorted(reserved & set(self.bart))
        if clash:
            raise ValueError(f"bart must not set {clash}: they come from d_model and the tokenizer")

    @property
    def num_outputs(self) -> int:
        """18 findings + normal/abnormal."""
        return self.num_findings + 1

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HeadConfig:
        return _from_dict(cls, data, "head")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the model: preprocessing, backbone and head.

    ``encoder`` names the image encoder whose tokens the head reads (``neuroradix.models.encoders``);
    only for ``"swinunetr"`` must ``head.embed_dim`` equal the backbone's width (the release
    manifest checks the other encoders' widths).
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    encoder: str = "swinunetr"

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ValueError(f"encoder must be a non-empty name, got {self.encoder!r}")
        if self.encoder == "swinunetr" and self.head.embed_dim != self.backbone.embed_dim:
            raise ValueError(
                f"head.embed_dim ({self.head.embed_dim}) must be 24 * backbone.feature_size "
                f"({self.backbone.embed_dim})"
            )

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if not isinstance(data, dict):
            raise ValueError("model config must be a mapping")
        unknown = sorted(set(data) - {"preprocess", "backbone", "head", "encoder"})
        if unknown:
            raise ValueError(f"model config: unknown key(s) {unknown}")
        return cls(
            preprocess=PreprocessConfig.from_dict(data.get("preprocess", {})),
            backbone=BackboneConfig.from_dict(data.get("backbone", {})),
            head=HeadConfig.from_dict(data.get("head", {})),
            encoder=str(data.get("encoder", "swinunetr")),
        )


def diff_dicts(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Human-readable differences between two nested JSON-like values (``path: a != b``)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key in sorted(set(expected) | set(actual), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in actual:
                out.append(f"{where}: missing (expected {expected[key]!r})")
            elif key not in expected:
                out.append(f"{where}: unexpected (got {actual[key]!r})")
            else:
                out.extend(diff_dicts(expected[key], actual[key], where))
        return out
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        if len(expected) == len(actual):
            out = []
            for i, (e, a) in enumerate(zip(expected, actual)):
                out.extend(diff_dicts(e, a, f"{path}[{i}]"))
            return out
    if expected != actual:
        return [f"{path or '<root>'}: expected {expected!r}, got {actual!r}"]
    return []


def tiny_config() -> ModelConfig:
    """A model small enough for unit tests on a 2-core CPU (feature_size 12, 64^3 windows, tiny BART)."""
    return ModelConfig(
        preprocess=PreprocessConfig(target_spacing=(4.0, 4.0, 4.0), patch_size=64, global_size=64, overlap=0.25),
        backbone=BackboneConfig(feature_size=12),
        head=HeadConfig(
            embed_dim=24 * 12,
            d_model=32,
            num_heads=4,
            num_gen_queries=4,
            gat_heads=2,
            dropout=0.0,
            max_report_tokens=24,
            bart={
                "encoder_layers": 1,
                "decoder_layers": 1,
                "encoder_attention_heads": 2,
                "decoder_attention_heads": 2,
                "encoder_ffn_dim": 32,
                "decoder_ffn_dim": 64,
                "max_position_embeddings": 128,
                "dropout": 0.0,
            },
        ),
    )
