"""CT-CLIP (CT-RATE's authors): snapshot, import and run-time encoder of the published weights.

Code and weights of CT-CLIP are licensed CC BY-NC-SA 4.0, so the network is this project's own
implementation (:mod:`neuroradix.models.published.ctclip_net`), proven equal to the authors' code
on fixed-seed weights by golden outputs recorded once by hand (nothing of their code is here).

Published download (``ibrahimhamamci/CT-RATE``, ``models/CT-CLIP-Related/``) and what the import
takes from it::

    CT-CLIP_v2.pt                         state dict: visual_transformer.*, to_visual_latent.weight,
                                          temperature, text_transformer.* (CXR-BERT), to_text_latent
    CT_LiPro_v2.pt        (optional)      ClassFine: trained_model.<the above> + classifier.{weight,bias}
    BiomedVLP-CXR-BERT-specialized/       config.json + tokenizer files of microsoft/BiomedVLP-CXR-BERT-specialized

The release holds the image weights (``ctclip_image.pt``), the 18 prompt embeddings (the text side
runs once, at import) and the ClassFine head when given; the node needs no text model at run time.
Preprocessing follows CT-RATE's ``data_inference_nii.py``: HU clipped to -1000..1000, trilinear
resampling to 1.5 mm (slices) x 0.75 mm x 0.75 mm, / 1000, centre crop / pad with -1 to
240 x 480 x 480.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

import numpy as np

from neuroradix.errors import WeightsError
from neuroradix.models.findings import CTRATE_FINDINGS
from neuroradix.models.published.base import (
    FINDINGS,
    KEYS_DIR,
    PROMPT_FILE,
    ImageEncoder,
    PublishedSpec,
    Reported,
    binary_softmax,
    load_key_list,
    load_prompt_embeddings,
    published_section,
    read_prompts,
    save_prompt_embeddings,
    verify_state_dict,
)
from neuroradix.models.release import load_published_release, sha256_file, write_published_release

if TYPE_CHECKING:  # torch is an optional heavy dependency (the worker extra): imported where used
    import torch

    from neuroradix.models.published.ctclip_net import CTCLIPImage
    from neuroradix.types import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "CTCLIP",
    "CTCLIPSpec",
    "CTCLIPEncoder",
    "keyed_random_tensor",
    "random_state_dict",
    "preprocess_array",
    "CHECKPOINT",
    "CLASSFINE",
    "TEXT_DIR",
]

CHECKPOINT = "CT-CLIP_v2.pt"
CLASSFINE = "CT_LiPro_v2.pt"
TEXT_DIR = "BiomedVLP-CXR-BERT-specialized"
SNAPSHOT_MARKER = "NEURORADIX_TEST_SNAPSHOT.json"
IMAGE_FILE = "ctclip_image.pt"
HEAD_FILE = "classfine_head.pt"
TEMPLATE = ("{finding} is present.", "{finding} is not present.")
KNOWN_EXTRA = ("text_transformer.embeddings.position_ids",)
TEXT_PREFIXES = ("text_transformer.", "to_text_latent.", "to_text_latent_extra.")
# the authors' ClassFine class order (ct_lipro_inference.py) is CT-RATE's label order; matched to FINDINGS by name
_LIPRO_ORDER = CTRATE_FINDINGS
TARGET_SPACING = (1.5, 0.75, 0.75)  # slices, then the two in-plane axes (mm)
TARGET_SHAPE = (240, 480, 480)
# A tiny BERT for test snapshots: 12 layers like CXR-BERT so that the key names match the published file.
_TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 12, "num_attention_heads": 2, "intermediate_size": 64}
_BIG = 1 << 20


# ---------------------------------------------------------------------------- random weights


def keyed_random_tensor(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Deterministic random values for state-dict entry ``key`` (independent of construction order).

    Used for test snapshots and for the golden outputs recorded from the authors' code (the same
    weights load into both).  Tensors of a million values or more are a sliding window over one
    random vector (row ``i`` starts at element ``i``): a strided view, so files stay small.

    Parameters
    ----------
    key:
        State-dict key; its CRC-32 and ``seed`` seed the generator.
    shape:
        Shape of the tensor.
    seed:
        Snapshot seed.

    Returns
    -------
    torch.Tensor
        float32 values of the given shape.
    """
    import torch  # noqa: PLC0415 - optional heavy dependency (the worker extra)

    gen = torch.Generator().manual_seed((seed * 0x9E3779B1 + zlib.crc32(key.encode())) % (1 << 62))
    leaf = key.rsplit(".", 1)[-1]
    n = int(np.prod(shape)) if shape else 1
    if n == 0:
        return torch.zeros(shape)
    if key.endswith("position_ids"):
        return torch.arange(shape[-1]).expand(*shape).clone()
    if leaf in ("initted",):
        return torch.ones(shape)
    if leaf == "cluster_size":
        return torch.rand(shape, generator=gen)
    if leaf == "temperature":
        return torch.tensor(2.0 + 0.1 * float(torch.randn(1, generator=gen)))
    if len(shape) <= 1:
        base = 1.0 if leaf in ("weight", "gamma", "q_scale", "k_scale") else 0.0
        return base + 0.1 * torch.randn(shape, generator=gen)
    scale = 1.0 / math.sqrt(int(np.prod(shape[1:])))
    if n >= _BIG:
        rest = int(np.prod(shape[1:]))
        strides = [1] + [int(np.prod(shape[i + 1 :])) for i in range(1, len(shape))]
        vec = torch.randn(rest + shape[0], generator=gen) * scale
        return vec.as_strided(tuple(shape), tuple(strides))
    return torch.randn(shape, generator=gen) * scale


def random_state_dict(shapes: Mapping[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """``{key: keyed_random_tensor(key, shape, seed)}`` for a key/shape list."""
    return {k: keyed_random_tensor(k, tuple(v), seed) for k, v in shapes.items()}


# ---------------------------------------------------------------------------- preprocessing


def preprocess_array(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    target_spacing: tuple[float, float, float] = TARGET_SPACING,
    target_shape: tuple[int, int, int] = TARGET_SHAPE,
) -> torch.Tensor:
    """CT-RATE's preprocessing of an HU array in the model's axis order ``(slices, a, b)``.

    Clip to -1000..1000, trilinear resampling (``align_corners=False``, float64) to
    ``target_spacing`` with sizes truncated like the authors' ``int(n * old / new)``, divide by
    1000, centre crop and pad with -1 to ``target_shape``.

    Returns
    -------
    torch.Tensor
        ``(1, 1, *target_shape)`` float32.
    """
    import torch  # noqa: PLC0415 - optional heavy dependency (the worker extra)
    import torch.nn.functional as F  # noqa: PLC0415, N812 - optional heavy dependency

    data = np.clip(np.asarray(array, dtype=np.float64), -1000.0, 1000.0)
    size = [int(data.shape[i] * (spacing[i] / target_spacing[i])) for i in range(3)]
    t = torch.from_numpy(np.ascontiguousarray(data))[None, None]
    t = F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0, 0]
    t = (t / 1000.0).float()
    for axis, want in enumerate(target_shape):
        have = t.shape[axis]
        if have > want:
            start = (have - want) // 2
            t = t.narrow(axis, start, want)
    pads: list[int] = []
    for axis in reversed(range(3)):
        missing = target_shape[axis] - t.shape[axis]
        pads += [missing // 2, missing - missing // 2]
    t = F.pad(t, pads, value=-1.0)
    return t[None, None].contiguous()


def model_axes(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The node's ``(slice, row, column)`` volume in CT-RATE's array order ``(slice, column, row)``.

    CT-RATE's NIfTI arrays are ``(x, y, z)`` = (column, row, slice) and ``data_inference_nii.py``
    permutes them to ``(z, x, y)``; the node's slice order is kept.
    """
    arr = np.transpose(np.asarray(volume.array), (0, 2, 1))
    sp = volume.spacing
    return arr, (float(sp[0]), float(sp[2]), float(sp[1]))


# ---------------------------------------------------------------------------- run time


class CTCLIPEncoder(ImageEncoder):
    """CT-CLIP's image encoder with the release's prompt embeddings (and ClassFine head, if any)."""

    def __init__(
        self,
        model: CTCLIPImage,
        positive: torch.Tensor,
        negative: torch.Tensor,
        head: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        untrained: bool = False,
    ) -> None:
        self.model = model.eval()
        self.positive = positive.float()
        self.negative = negative.float()
        self.head = head
        self.untrained = untrained
        self._last: Optional[tuple[tuple[int, tuple[int, ...]], torch.Tensor]] = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """``(1, 1, 240, 480, 480)`` input made as CT-RATE's inference code does it."""
        arr, spacing = model_axes(volume)
        return preprocess_array(arr, spacing).to(self.device)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised image latent ``(1, 512)`` (CT-CLIP's ``image_latents``)."""
        import torch  # noqa: PLC0415 - optional heavy dependency (the worker extra)

        tag = (x.data_ptr(), tuple(x.shape))
        if self._last is not None and self._last[0] == tag:
            return self._last[1]
        with torch.inference_mode():
            latent = self.model(x.to(self.device)).float().cpu()
        self._last = (tag, latent)
        return latent

    def findings(self, x: torch.Tensor) -> dict[str, float]:
        """ClassFine probabilities when the release has the head, else zero-shot prompt softmax."""
        import torch  # noqa: PLC0415 - optional heavy dependency (the worker extra)

        latent = self.embed(x)[0]
        if self.head is not None:
            weight, bias = self.head
            probs = torch.sigmoid(weight @ torch.relu(latent) + bias)
        else:
            scale = self.model.logit_scale()
            probs = binary_softmax(self.positive @ latent * scale, self.negative @ latent * scale)
        return {name: float(p) for name, p in zip(FINDINGS, probs.tolist())}


# ---------------------------------------------------------------------------- spec


def _split(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    image = {k: v for k, v in state.items() if not k.startswith(TEXT_PREFIXES)}
    text = {k: v for k, v in state.items() if k.startswith(TEXT_PREFIXES)}
    return image, text


def _load_pt(path: Path) -> dict[str, torch.Tensor]:
    import torch  # noqa: PLC0415 - optional heavy dependency (the worker extra)

    if not path.is_file():
        raise WeightsError(f"{path}: missing from the download")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a broken or foreign file
        raise WeightsError(f"{path.name}: not a PyTorch state dict: {exc}") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path.name}: expected a state dict, got {type(state).__name__}")
    return state


def _bert_config(folder: Path) -> Any:
    from transformers import BertConfig  # noqa: PLC0415 - optional heavy dependency, import time only

    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for drop in ("model_type", "architectures", "auto_map", "transformers_version"):
        cfg.pop(drop, None)
    return BertConfig(**cfg)


@dataclass(frozen=True)
class CTCLIPSpec(PublishedSpec):
    """CT-CLIP v2 (Hamamci et al.), CC BY-NC-SA 4.0."""

    accept_token: ClassVar[str] = "cc-by-nc-sa-4.0"

    # ------------------------------------------------------------------ snapshot
    def make_test_snapshot(self, dir: Path, seed: int = 0, classfine: bool = True) -> None:
        """Write ``CT-CLIP_v2.pt``, ``CT_LiPro_v2.pt`` and a tiny CXR-BERT folder with random weights.

        The image weights have the published keys and shapes (large matrices are strided views of
        one random vector, so the files stay small); the text side is a 12-layer BERT of width 32
        with the published key names and a tokenizer covering the 18 prompts.
        """
        import torch  # noqa: PLC0415 - optional heavy dependency (the worker extra)
        from transformers import BertModel, BertTokenizer  # noqa: PLC0415 - optional heavy dependency

        out = Path(dir)
        text_dir = out / TEXT_DIR
        text_dir.mkdir(parents=True, exist_ok=True)
        words = sorted({w for name in FINDINGS for w in name.lower().split()} | {"is", "present", "not", "."})
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
        (text_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        BertTokenizer(str(text_dir / "vocab.txt"), do_lower_case=True).save_pretrained(str(text_dir))
        max_positions = 512
        config = {
            "model_type": "bert",
            "vocab_size": len(vocab),
            "max_position_embeddings": max_positions,
            **_TINY_BERT,
        }
        (text_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        bert = BertModel(_bert_config(text_dir), add_pooling_layer=True)
        shapes: dict[str, list[int]] = dict(load_key_list(self.name))
        shapes.update({f"text_transformer.{k}": list(v.shape) for k, v in bert.state_dict().items()})
        shapes["text_transformer.embeddings.position_ids"] = [1, max_positions]
        width = _TINY_BERT["hidden_size"]
        shapes["to_text_latent.weight"] = [512, width]
        shapes["to_text_latent_extra.weight"] = [512, width]
        state = random_state_dict(shapes, seed)
        torch.save(state, out / CHECKPOINT)
        if classfine:
            lipro = {f"trained_model.{k}": v for k, v in state.items()}
            lipro["classifier.weight"] = keyed_random_tensor("classifier.weight", (18, 512), seed) * 8.0
            lipro["classifier.bias"] = keyed_random_tensor("classifier.bias", (18,), seed)
            torch.save(lipro, out / CLASSFINE)
        (out / SNAPSHOT_MARKER).write_text(
            json.dumps({"model": self.name, "seed": seed, "note": "random weights: UNTRAINED"}) + "\n", encoding="utf-8"
        )
        logger.info("wrote a CT-CLIP test snapshot (seed %d) to %s", seed, out)

    # ------------------------------------------------------------------ import
    def verify(self, state: Mapping[str, torch.Tensor], origin: str) -> None:
        """Strict check of a CT-CLIP state dict: image keys and shapes, text key names.

        Raises
        ------
        WeightsError
            A key missing or unexpected (``position_ids`` is allowed), or an image shape differs.
        """
        image, text = _split(state)
        verify_state_dict(image, self.name, allowed_extra=self.known_extra_keys, origin=origin)
        want = set(json.loads((KEYS_DIR / f"{self.name}-text-keys.json").read_text(encoding="utf-8"))["keys"])
        have = set(text)
        missing = sorted(want - have)
        extra = sorted(have - want - set(self.known_extra_keys))
        if missing or extra:
            raise WeightsError(
                f"{origin}: text weights do not match the {self.name} key list: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})"
            )

    def import_release(self, source: Path, out: Path, *, prompts: Optional[Path] = None) -> dict:
        """Verify the download, embed the prompts once, write the release; its ``published`` section.

        The caller (``neuroradix weights import``) checks the licence first with
        :meth:`check_acceptance` (``--accept-license cc-by-nc-sa-4.0``).

        Raises
        ------
        WeightsError
            A file missing, or keys/shapes not the published ones.
        """
        import torch  # noqa: PLC0415 - optional heavy dependency (the worker extra)
        import torch.nn.functional as F  # noqa: PLC0415, N812 - optional heavy dependency
        from transformers import BertModel, BertTokenizer  # noqa: PLC0415 - optional heavy dependency

        src, dst = Path(source), Path(out)
        state = _load_pt(src / CHECKPOINT)
        self.verify(state, CHECKPOINT)
        image, text = _split(state)
        untrained = (src / SNAPSHOT_MARKER).is_file()

        text_dir = src / TEXT_DIR
        if not (text_dir / "config.json").is_file():
            raise WeightsError(f"{text_dir}: the CXR-BERT folder (config.json and tokenizer) is missing")
        bert = BertModel(_bert_config(text_dir), add_pooling_layer=True).eval()
        bert_state = {k[len("text_transformer.") :]: v for k, v in text.items() if k.startswith("text_transformer.")}
        if "embeddings.position_ids" not in bert.state_dict():
            bert_state.pop("embeddings.position_ids", None)
        try:
            bert.load_state_dict(bert_state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{CHECKPOINT}: text weights do not fit {text_dir.name}/config.json: {exc}") from exc
        tokenizer = BertTokenizer.from_pretrained(str(text_dir), do_lower_case=True)
        table = read_prompts(prompts, TEMPLATE)
        proj = text["to_text_latent.weight"].float()
        with torch.inference_mode():
            emb = []
            for column in (0, 1):
                batch = tokenizer(
                    [table[n][column] for n in FINDINGS],
                    return_tensors="pt",
                    padding="max_length",
                    truncation=True,
                    max_length=512,
                )
                cls = bert(batch["input_ids"], attention_mask=batch["attention_mask"])[0][:, 0]
                emb.append(F.normalize(cls @ proj.t(), dim=-1))
        dst.mkdir(parents=True, exist_ok=True)
        work = dst / ".import"
        work.mkdir(exist_ok=True)
        save_prompt_embeddings(work / PROMPT_FILE, emb[0], emb[1], table)
        torch.save({k: v for k, v in image.items() if not k.startswith("to_visual_latent_extra.")}, work / IMAGE_FILE)
        files = {IMAGE_FILE: work / IMAGE_FILE, PROMPT_FILE: work / PROMPT_FILE}
        sources = {CHECKPOINT: sha256_file(src / CHECKPOINT), **self._text_hashes(text_dir)}
        method = "zero-shot prompts"
        if (src / CLASSFINE).is_file():
            head = self._classfine(src / CLASSFINE)
            torch.save(head, work / HEAD_FILE)
            files[HEAD_FILE] = work / HEAD_FILE
            sources[CLASSFINE] = sha256_file(src / CLASSFINE)
            method = "ClassFine linear head"
        section = published_section(
            self,
            sources,
            untrained=untrained,
            prompts=table,
            extra={"findings_method": method, "licence_note": "non-commercial licence (CC BY-NC-SA 4.0)"},
        )
        write_published_release(dst, files, section, untrained=untrained, notes=f"{self.title}; {method}")
        for p in files.values():
            p.unlink()
        work.rmdir()
        return section

    @staticmethod
    def _text_hashes(folder: Path) -> dict[str, str]:
        return {f"{TEXT_DIR}/{p.name}": sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}

    def _classfine(self, path: Path) -> dict[str, torch.Tensor]:
        state = _load_pt(path)
        head_keys = {"classifier.weight", "classifier.bias"}
        missing = sorted(head_keys - set(state))
        if missing:
            raise WeightsError(f"{path.name}: no ClassFine head ({missing} missing)")
        inner = {k[len("trained_model.") :]: v for k, v in state.items() if k.startswith("trained_model.")}
        others = sorted(set(state) - head_keys - {f"trained_model.{k}" for k in inner})
        if others:
            raise WeightsError(f"{path.name}: unexpected keys {others[:3]}")
        self.verify(inner, path.name)
        weight, bias = state["classifier.weight"].float(), state["classifier.bias"].float()
        if tuple(weight.shape) != (18, 512) or tuple(bias.shape) != (18,):
            raise WeightsError(f"{path.name}: classifier is {tuple(weight.shape)}, expected (18, 512)")
        order = [_LIPRO_ORDER.index(n) for n in FINDINGS]
        return {"weight": weight[order].contiguous(), "bias": bias[order].contiguous()}

    # ------------------------------------------------------------------ load
    def load(
        self, release: Path, device: Union[str, torch.device] = "cpu", *, allow_untrained: bool = True
    ) -> CTCLIPEncoder:
        """The run-time encoder of a release made by :meth:`import_release` (files verified first).

        The analyzer gates untrained releases before it calls this (hence ``allow_untrained``
        true by default); the encoder's ``untrained`` says which kind it is.
        """
        import torch  # noqa: PLC0415 - optional heavy dependency (the worker extra)

        from neuroradix.models.published.ctclip_net import CTCLIPImage, CTViTConfig  # noqa: PLC0415 - needs torch

        root = Path(release)
        manifest = load_published_release(root, allow_untrained=allow_untrained)
        if manifest["published"]["model"] != self.name:
            raise WeightsError(f"{root}: release is of {manifest['published']['model']}, not {self.name}")
        model = CTCLIPImage(CTViTConfig())
        state = torch.load(str(root / IMAGE_FILE), map_location="cpu", weights_only=True)
        state.pop("to_visual_latent_extra.weight", None)
        model.load_state_dict(state, strict=True)
        positive, negative = load_prompt_embeddings(root / PROMPT_FILE)
        head = None
        if (root / HEAD_FILE).is_file():
            h = torch.load(str(root / HEAD_FILE), map_location="cpu", weights_only=True)
            head = (h["weight"], h["bias"])
        return CTCLIPEncoder(model.to(device), positive, negative, head, untrained=bool(manifest["untrained"]))


CTCLIP = CTCLIPSpec(
    name="ct-clip",
    title="CT-CLIP v2 (CT-RATE authors), CTViT image encoder",
    version="v2",
    source="https://huggingface.co/datasets/ibrahimhamamci/CT-RATE (models/CT-CLIP-Related/)",
    licence="CC-BY-NC-SA-4.0",
    needs_licence_acceptance=True,
    restriction_note="non-commercial licence (CC BY-NC-SA 4.0) for code and weights",
    reported=(
        Reported("macro AUROC (zero-shot)", 0.731, "CT-RATE internal validation", "Hamamci et al., arXiv 2403.17834"),
        Reported("macro AUROC (VocabFine)", 0.756, "CT-RATE internal validation", "Hamamci et al., arXiv 2403.17834"),
        Reported("macro AUROC (ClassFine)", 0.756, "CT-RATE internal validation", "Hamamci et al., arXiv 2403.17834"),
    ),
    known_extra_keys=KNOWN_EXTRA,
)
"""The CT-CLIP spec (registry entry ``"ct-clip"``)."""
