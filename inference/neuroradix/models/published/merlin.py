"""Merlin (Stanford MIMI, code and weights MIT) served from the checkpoint a site downloads.

Published download (huggingface.co/stanfordmimi/Merlin, read from ``merlin/models/load.py`` of
``merlin-vlm`` 0.0.7): one ``torch.save`` state dict of ``MerlinArchitecture``,
:data:`CHECKPOINT`, holding the image encoder (``encode_image.i3_resnet.*``: the I3ResNet-152, the
1,692-phecode ``classifier`` and the 512-d ``contrastive_head``), the Clinical-Longformer text
encoder with its 768 -> 512 ``linear_layer`` (``encode_text.*``) and ``logit_scale``.  The text
encoder's configuration and tokenizer are those of ``yikuan8/Clinical-Longformer``, which a site
downloads next to it into the folder :data:`TEXT_DIR` (``config.json`` and the tokenizer files; its
weights are not used, the checkpoint's are).

What runs where:

* the image side is the node's :class:`~neuroradix.models.encoders.i3resnet.I3ResNet152` (own
  code with the published parameter names) plus the two 1x1x1 heads; ``tests/models/published/
  test_merlin.py`` proves its forward equal to ``merlin-vlm``'s ``I3ResNet`` on the same weights;
* preprocessing is Merlin's MONAI chain (``merlin/data/monai_transforms.py``: orientation RAS,
  spacing 1.5 x 1.5 x 3 mm bilinear, -1000..1000 HU -> 0..1 clipped, pad and centre-crop to
  224 x 224 x 160) applied with MONAI itself to the node's volume as an in-memory RAS
  ``MetaTensor`` instead of a NIfTI file; the test proves it equal to the reference on NIfTI;
* the text side (Clinical-Longformer, ``transformers``) runs once, at import, from local files
  only: the 18 CT-RATE findings' prompt embeddings are stored in the release, so the node needs no
  text model at run time.  Merlin's own zero-shot prompt wording was not available to check; the
  template is :data:`PROMPT_TEMPLATE` (a site may pass its own with ``--prompts``), and the
  probability is a softmax over the scaled cosine similarities of the positive and negative prompt
  (``exp(logit_scale)`` as the scale), which is the presence/absence comparison the paper describes.

Merlin was trained on abdominal CT; its chest zero-shot performance is weak (reported CT-RATE AUROC
0.595, :data:`MERLIN`'s ``reported``).  torch, MONAI and transformers are imported inside the
functions that need them (optional heavy dependencies), so the registry stays cheap to import.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import numpy as np

from neuroradix.errors import WeightsError
from neuroradix.models.published.base import (
    FINDINGS,
    PROMPT_FILE,
    ImageEncoder,
    PublishedSpec,
    Reported,
    binary_softmax,
    ensure_torchvision_importable,
    load_prompt_embeddings,
    published_section,
    read_prompts,
    save_prompt_embeddings,
    verify_state_dict,
)
from neuroradix.models.release import load_published_release, sha256_file, write_published_release

if TYPE_CHECKING:  # torch is an optional heavy dependency; only the type names are needed here
    import torch
    from torch import nn

    from neuroradix.types import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT",
    "TEXT_DIR",
    "PROMPT_TEMPLATE",
    "IMAGE_FILE",
    "SNAPSHOT_MARKER",
    "MerlinSpec",
    "MerlinEncoder",
    "MERLIN",
    "merlin_transforms",
    "volume_to_metatensor",
    "sanitize_report",
]

CHECKPOINT = "i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"
"""The published checkpoint's file name (``MODEL_CONFIGS["default"]`` of ``merlin-vlm`` 0.0.7)."""
TEXT_DIR = "Clinical-Longformer"
"""Folder of the download holding ``yikuan8/Clinical-Longformer``'s ``config.json`` and tokenizer."""
PROMPT_TEMPLATE = ("{finding} is present.", "{finding} is not present.")
IMAGE_FILE = "merlin_image.safetensors"
"""Release file: ``encode_image.i3_resnet.*`` without the prefix (encoder and both heads), float32."""
SNAPSHOT_MARKER = "NEURORADIX_TEST_SNAPSHOT.json"
"""Written by :meth:`MerlinSpec.make_test_snapshot`; a release imported from such a folder is UNTRAINED."""

IMAGE_PREFIX = "encode_image.i3_resnet."
TEXT_MODEL_PREFIX = "encode_text.text_encoder."
TEXT_HEAD_PREFIX = "encode_text.linear_layer."
SPACING_RAS = (1.5, 1.5, 3.0)
ROI_RAS = (224, 224, 160)
PHECODES = 1692
CONTRASTIVE = 512
TEXT_MAX_LENGTH = 1024
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")


def sanitize_report(text: str) -> str:
    """Merlin's text normalisation: lower case, NLTK ``wordpunct_tokenize`` tokens joined by spaces.

    ``wordpunct_tokenize`` is the regular expression ``\\w+|[^\\w\\s]+``; it is used here directly.
    """
    return " ".join(_WORDPUNCT.findall(text.lower()))


def merlin_transforms() -> Any:
    """Merlin's ``ImageTransforms`` after loading: the MONAI chain applied to a channel-first RAS image."""
    from monai.transforms import (  # noqa: PLC0415 - optional heavy dependency (MONAI)
        CenterSpatialCrop,
        Compose,
        Orientation,
        ScaleIntensityRange,
        Spacing,
        SpatialPad,
    )

    return Compose(
        [
            Orientation(axcodes="RAS"),
            Spacing(pixdim=SPACING_RAS, mode="bilinear"),
            ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True),
            SpatialPad(spatial_size=list(ROI_RAS)),
            CenterSpatialCrop(roi_size=list(ROI_RAS)),
        ]
    )


def volume_to_metatensor(volume: Volume) -> Any:
    """The node's volume as MONAI loads a NIfTI: channel-first float32, RAS affine in the metadata."""
    import torch  # noqa: PLC0415 - optional heavy dependency (torch)
    from monai.data import MetaTensor  # noqa: PLC0415 - optional heavy dependency (MONAI)

    array = np.ascontiguousarray(volume.array, dtype=np.float32)[None]
    # Merlin's pipeline reads NIfTI, whose affine is stored in float32: round it the same way.  MONAI's
    # Spacing chooses the output grid's origin with a tolerance test on the corners, so on oblique
    # scans an affine differing by 1e-7 can move the whole grid by half a voxel.
    affine = (_LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64)).astype(np.float32).astype(np.float64)
    return MetaTensor(
        array,
        affine=torch.as_tensor(affine, dtype=torch.float64),
        meta={"space": "RAS", "original_channel_dim": "no_channel"},
    )


def _torchvision_guard() -> None:
    """transformers imports torchvision when it is installed: make a CUDA build importable first."""
    if importlib.util.find_spec("torchvision") is not None:
        ensure_torchvision_importable()


def _build_image_model() -> nn.Module:
    """The node's I3ResNet-152 with Merlin's two heads, parameter names as ``encode_image.i3_resnet``."""
    from torch import nn  # noqa: PLC0415 - optional heavy dependency (torch)

    from neuroradix.models.encoders.i3resnet import I3ResNet152  # noqa: PLC0415 - imports torch

    class MerlinImageModel(I3ResNet152):
        """I3ResNet-152 + ``classifier`` (phecodes) + ``contrastive_head`` (1x1x1 convolutions)."""

        def __init__(self) -> None:
            super().__init__("merlin")
            self.classifier = nn.Conv3d(2048, PHECODES, 1, bias=True)
            self.contrastive_head = nn.Conv3d(2048, CONTRASTIVE, 1, bias=True)

    return MerlinImageModel()


@dataclass
class MerlinEncoder(ImageEncoder):
    """Run-time Merlin image side: preprocessing, 2048-d embedding, zero-shot findings, phecodes."""

    model: Any
    positive: Any  # (18, 512) unit-length prompt embeddings
    negative: Any
    logit_scale: float
    device: Any
    untrained: bool = False
    _last: Optional[tuple[Any, int, Any]] = field(default=None, repr=False)  # (weakref to input, version, pooled)

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """``(1, 1, 224, 224, 160)`` in Merlin's (R, A, S) layout, exactly as ``ImageTransforms``."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch)

        out = merlin_transforms()(volume_to_metatensor(volume))
        return torch.as_tensor(out.as_tensor() if hasattr(out, "as_tensor") else out).float()[None]

    def input_affine(self, volume: Volume) -> np.ndarray:
        """Index-to-LPS affine of :meth:`preprocess`'s (R, A, S) grid."""
        out = merlin_transforms()(volume_to_metatensor(volume))
        return _LPS_TO_RAS @ np.asarray(out.affine, dtype=np.float64)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        import torch  # noqa: PLC0415 - optional heavy dependency (torch)

        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"input must be (B, 1, R, A, S) as preprocess() makes it, got {tuple(x.shape)}")
        # embed() and findings() of one scan share a forward (inference tensors have no version: no cache)
        version = None if x.is_inference() else x._version
        if version is not None and self._last is not None:
            ref, seen, pooled = self._last
            if ref() is x and seen == version:
                return pooled
        with torch.inference_mode():
            sra = x.to(self.device).permute(0, 1, 4, 2, 3).contiguous(memory_format=torch.channels_last_3d)
            fmap = self.model.feature_map(sra)
            pooled = fmap.mean(dim=(2, 3, 4), keepdim=True)
        self._last = None if version is None else (weakref.ref(x), version, pooled)
        return pooled

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048-d average-pooled image feature (``ImageEmbedding=True``; the reference adds a leading 1)."""
        return self._pooled(x).flatten(1).float().cpu()

    def findings(self, x: torch.Tensor) -> dict[str, float]:
        """Zero-shot probability of each finding from the stored prompt embeddings."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch)

        with torch.inference_mode():
            image = self.model.contrastive_head(self._pooled(x)).flatten(1).float().cpu()
            image = image / image.norm(dim=-1, keepdim=True)
            scale = float(np.exp(self.logit_scale))
            probs = binary_softmax(scale * image @ self.positive.T, scale * image @ self.negative.T)[0]
        return {name: float(p) for name, p in zip(FINDINGS, probs)}

    def phecodes(self, x: torch.Tensor) -> torch.Tensor:
        """The 1,692 phecode probabilities of Merlin's phenotype head (``PhenotypeCls=True``)."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch)

        with torch.inference_mode():
            return torch.sigmoid(self.model.classifier(self._pooled(x)).flatten(1)).float().cpu()


def _random_bn(model: nn.Module, gen: Any) -> None:
    """Random BatchNorm statistics and affine parameters (so parity tests exercise them).

    The last BatchNorm of each residual branch gets a small scale, so that the random network's
    output still depends on its input through 50 blocks (a test of equal outputs can then fail).
    """
    import torch  # noqa: PLC0415 - optional heavy dependency (torch)
    from torch import nn  # noqa: PLC0415 - optional heavy dependency (torch)

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm3d):
                n = m.num_features
                scale = 0.2 if name.endswith("bn3") else 1.0
                m.weight.copy_(scale * (0.5 + 0.5 * torch.rand(n, generator=gen)))
                m.bias.copy_(0.1 * scale * torch.randn(n, generator=gen))
                assert m.running_mean is not None and m.running_var is not None  # track_running_stats
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def _write_tiny_text_model(text_dir: Path, seed: int) -> dict[str, Any]:
    """A tiny Clinical-Longformer stand-in (1 layer, width 768) with a byte-level BPE tokenizer."""
    import torch  # noqa: PLC0415 - optional heavy dependency (torch)
    from tokenizers import ByteLevelBPETokenizer  # noqa: PLC0415 - optional heavy dependency
    from tokenizers.processors import RobertaProcessing  # noqa: PLC0415 - optional heavy dependency
    from transformers import (  # noqa: PLC0415 - optional heavy dependency
        LongformerConfig,
        LongformerModel,
        PreTrainedTokenizerFast,
    )

    _torchvision_guard()
    text_dir.mkdir(parents=True, exist_ok=True)
    corpus = [sanitize_report(t) for n in FINDINGS for t in (n, *(p.format(finding=n) for p in PROMPT_TEMPLATE))]
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=specials)
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    tok.save_pretrained(str(text_dir))
    config = LongformerConfig(
        vocab_size=len(tok),
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=64,
        max_position_embeddings=TEXT_MAX_LENGTH + 2,
        attention_window=[16],
        initializer_range=0.5,  # large random weights: prompt embeddings differ between findings
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config.save_pretrained(str(text_dir))
    torch.manual_seed(seed)
    return LongformerModel(config).state_dict()


def _text_embeddings(text_dir: Path, state: Mapping[str, Any], prompts: Mapping[str, tuple[str, str]]) -> tuple:
    """Run Merlin's ``TextEncoder`` once (local files only): ``(positive, negative)``, each ``(18, 512)``."""
    import torch  # noqa: PLC0415 - optional heavy dependency (torch)
    from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: PLC0415 - optional heavy dependency

    _torchvision_guard()
    if not (text_dir / "config.json").is_file():
        raise WeightsError(f"{text_dir}: no config.json (download yikuan8/Clinical-Longformer into {TEXT_DIR}/)")
    config = AutoConfig.from_pretrained(str(text_dir), local_files_only=True)
    model = AutoModel.from_config(config)
    text_state = {k[len(TEXT_MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(TEXT_MODEL_PREFIX)}
    text_state.pop("embeddings.position_ids", None)  # a buffer older transformers saved; not a parameter
    try:
        model.load_state_dict(text_state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{CHECKPOINT}: text encoder does not match {text_dir}/config.json: {exc}") from exc
    tokenizer = AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
    linear = torch.nn.Linear(768, CONTRASTIVE)
    linear.load_state_dict({k[len(TEXT_HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(TEXT_HEAD_PREFIX)})
    model.eval()

    def encode(texts: list[str]) -> torch.Tensor:
        inputs = tokenizer(
            [sanitize_report(t) for t in texts],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=TEXT_MAX_LENGTH,
        )
        with torch.inference_mode():
            return linear(model(**inputs).last_hidden_state[:, 0, :].float())

    names = list(FINDINGS)
    return encode([prompts[n][0] for n in names]), encode([prompts[n][1] for n in names])


@dataclass(frozen=True)
class MerlinSpec(PublishedSpec):
    """Merlin: snapshot, import and load (see the module docstring)."""

    def make_test_snapshot(self, dir: Path, seed: int = 0) -> None:
        """Write ``CHECKPOINT`` (random image weights, tiny text model) and ``Clinical-Longformer/``."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch)

        out = Path(dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        image = _build_image_model()
        _random_bn(image, gen)
        state: dict[str, Any] = {IMAGE_PREFIX + k: v for k, v in image.state_dict().items()}
        text = _write_tiny_text_model(out / TEXT_DIR, seed)
        state.update({TEXT_MODEL_PREFIX + k: v for k, v in text.items()})
        head = torch.nn.Linear(768, CONTRASTIVE)
        state.update({TEXT_HEAD_PREFIX + k: v for k, v in head.state_dict().items()})
        state["logit_scale"] = torch.tensor(float(np.log(10.0)))
        torch.save(state, out / CHECKPOINT)
        (out / SNAPSHOT_MARKER).write_text(json.dumps({"model": self.name, "seed": seed, "untrained": True}) + "\n")
        logger.info("wrote a Merlin test snapshot (random weights, seed %d) to %s", seed, out)

    def import_release(self, source: Path, out: Path, *, prompts: Optional[Path] = None) -> dict:
        """Verify the download strictly, embed the prompts with its text side, write the release."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch)
        from safetensors.torch import save_file  # noqa: PLC0415 - optional heavy dependency

        src = Path(source)
        ckpt = src / CHECKPOINT
        if not ckpt.is_file():
            raise WeightsError(f"{src}: no {CHECKPOINT} (the Merlin download from {self.source})")
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad download
            raise WeightsError(f"{ckpt}: not a readable torch state dict: {exc}") from exc
        if not isinstance(state, dict):
            raise WeightsError(f"{ckpt}: expected a state dict, got {type(state).__name__}")
        image = {k: v for k, v in state.items() if k.startswith("encode_image.")}
        verify_state_dict(image, self.name, origin=str(ckpt))
        others = sorted(k for k in state if not k.startswith("encode_image."))
        unknown = [
            k
            for k in others
            if not (k.startswith(TEXT_MODEL_PREFIX) or k.startswith(TEXT_HEAD_PREFIX) or k == "logit_scale")
            and k not in self.known_extra_keys
        ]
        if unknown or "logit_scale" not in state:
            raise WeightsError(f"{ckpt}: unexpected keys {unknown[:5]} or no logit_scale (not Merlin's checkpoint?)")
        chosen = read_prompts(prompts, PROMPT_TEMPLATE)
        positive, negative = _text_embeddings(src / TEXT_DIR, state, chosen)
        untrained = (src / SNAPSHOT_MARKER).is_file()
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            image_path = Path(tmp) / IMAGE_FILE
            prompt_path = Path(tmp) / PROMPT_FILE
            weights = {
                k[len(IMAGE_PREFIX) :]: v.float().contiguous() for k, v in image.items() if v.is_floating_point()
            }
            weights.update({k[len(IMAGE_PREFIX) :]: v for k, v in image.items() if not v.is_floating_point()})
            save_file(weights, str(image_path), metadata={"model": self.name, "source": CHECKPOINT})
            save_prompt_embeddings(prompt_path, positive, negative, chosen)
            files = {CHECKPOINT: sha256_file(ckpt)}
            for p in sorted((src / TEXT_DIR).rglob("*")):
                if p.is_file():
                    files[str(p.relative_to(src))] = sha256_file(p)
            section = published_section(
                self,
                files,
                untrained=untrained,
                prompts=chosen,
                extra={
                    "logit_scale": float(state["logit_scale"]),
                    "prompt_template": list(PROMPT_TEMPLATE) if prompts is None else None,
                    "embedding": {"dim": 2048, "what": "average-pooled I3ResNet-152 feature (ImageEmbedding=True)"},
                },
            )
            write_published_release(
                out,
                {IMAGE_FILE: image_path, PROMPT_FILE: prompt_path},
                section,
                untrained=untrained,
                notes="Merlin image encoder; prompt embeddings from its Clinical-Longformer text side at import",
            )
        logger.info("imported Merlin release into %s (untrained=%s)", out, untrained)
        return section

    def load(self, release: Path, device: Union[str, torch.device] = "cpu") -> MerlinEncoder:
        """The run-time encoder of a release (files verified; untrained releases are marked, not refused)."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch)
        from safetensors.torch import load_file  # noqa: PLC0415 - optional heavy dependency

        root = Path(release)
        manifest = load_published_release(root, allow_untrained=True)
        pub = manifest["published"]
        if pub.get("model") != self.name:
            raise WeightsError(f"{root}: a release of {pub.get('model')!r}, not {self.name!r}")
        model = _build_image_model()
        model.load_state_dict(load_file(str(root / IMAGE_FILE)), strict=True)
        # channels-last: 0.69x the reference's CPU time in one measured run, outputs equal to 1e-7 (report)
        model = model.eval().to(device).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        positive, negative = load_prompt_embeddings(root / PROMPT_FILE)
        positive = positive / positive.norm(dim=-1, keepdim=True)
        negative = negative / negative.norm(dim=-1, keepdim=True)
        return MerlinEncoder(
            model=model,
            positive=positive,
            negative=negative,
            logit_scale=float(pub["logit_scale"]),
            device=torch.device(device),
            untrained=bool(manifest.get("untrained")),
        )


MERLIN = MerlinSpec(
    name="merlin",
    title="Merlin (I3ResNet-152 + Clinical-Longformer, Stanford MIMI)",
    version="merlin-vlm-0.0.7/" + CHECKPOINT,
    source="huggingface.co/stanfordmimi/Merlin (+ huggingface.co/yikuan8/Clinical-Longformer config/tokenizer)",
    licence="MIT",
    needs_licence_acceptance=False,
    restriction_note="trained on abdominal CT; chest zero-shot performance is weak (research use)",
    reported=(
        Reported(
            metric="AUROC (zero-shot, chest findings)",
            value=0.595,
            dataset="CT-RATE",
            source="as quoted in the published-models brief (secondary source; Merlin's authors report abdominal results, "
            "arXiv 2406.06512)",
        ),
    ),
    known_extra_keys=(TEXT_MODEL_PREFIX + "embeddings.position_ids",),
)
