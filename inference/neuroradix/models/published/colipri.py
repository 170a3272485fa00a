"""COLIPRI (Microsoft, arXiv 2510.15042; weights ``microsoft/colipri``, MIT, research use only).

The node runs the authors' own code -- the ``colipri==0.1.3`` package (install extra
``published``) -- loading only local files: ``get_model(checkpoint_path=..., image_only=True)``
and ``get_processor(image_only=True)`` build the Primus ViT and the torchio preprocessing from
the package's bundled configs without a hub.  The text side (CXR-BERT-specialized + attention
pooling) runs once, at import, to store the prompt embeddings of the 18 CT-RATE findings.

Download layout (what a site fetches, and what :meth:`ColipriSpec.make_test_snapshot` writes)::

    <dir>/model.safetensors     microsoft/colipri: image_encoder.*, text_encoder.*, softmax_temperature
    <dir>/cxr-bert/             microsoft/BiomedVLP-CXR-BERT-specialized @ 5157bdba: config.json,
                                vocab.txt, tokenizer_config.json (the text model's weights are in
                                model.safetensors, so its own weight files are not needed)

Release layout (``neuroradix weights import colipri``)::

    <release>/manifest.json                   with the ``published`` section
    <release>/image_encoder.safetensors       image_encoder.* + softmax_temperature, checked strictly
    <release>/prompt_embeddings.safetensors   (18, 768) positive / negative prompt embeddings

Orientation: the 0.1.3 code resamples to **RAS** (``configs/config.yaml``: ``orientation: RAS``)
although the README shows the preprocessed image as ``SAR+``; and ``encode_image()`` without
projection returns the backbone's **864** channels, not the README's 768.  The code is what runs;
tests pin both.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from neuroradix.errors import WeightsError
from neuroradix.models.published.base import (
    FINDINGS,
    PROMPT_FILE,
    DenseMaps,
    ImageEncoder,
    PublishedSpec,
    Reported,
    binary_softmax,
    ensure_torchvision_importable,
    key_list_of,
    load_prompt_embeddings,
    published_section,
    read_prompts,
    save_prompt_embeddings,
    verify_state_dict,
)
from neuroradix.models.release import load_published_release, sha256_file, write_published_release

if TYPE_CHECKING:
    import torch

    from neuroradix.types import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "COLIPRI",
    "ColipriSpec",
    "ColipriEncoder",
    "volume_to_tio",
    "import_reference",
    "WEIGHTS",
    "TEXT_DIR",
    "IMAGE_FILE",
]

PACKAGE_VERSION = "0.1.3"
WEIGHTS = "model.safetensors"
TEXT_DIR = "cxr-bert"
IMAGE_FILE = "image_encoder.safetensors"
SNAPSHOT_MARKER = "NEURORADIX-TEST-SNAPSHOT.json"
TEXT_REVISION = "5157bdba1437a3aed316dacb1a5b68edf96b9902"  # the package's pinned CXR-BERT revision
TEMPLATE = ("{finding} present", "no {finding} present")  # the model card's example: "Lung nodules present"
PROJECTION_DIM = 768
_TEXT_PREFIX = "text_encoder."
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume_to_tio(volume: Volume) -> Any:
    """The node's volume as a torchio ``ScalarImage`` as torchio reads the same CT from a NIfTI file.

    The array keeps the node's index order ``(slice, row, column)``; only the affine changes frame
    (LPS -> RAS).  Integral HU that fit int16 (every CT stored with slope 1) are passed as int16,
    the type a CT NIfTI holds: torchio's ``Resample`` keeps the image's dtype, so the reference
    rounds the resampled HU to integers, and so must the node (up to 1 HU, 0.001 after rescaling).
    """
    import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    import_reference()
    import torchio as tio  # noqa: PLC0415 - optional heavy dependency (the published extra)

    array = np.asarray(volume.array)
    integral = bool(array.size) and float(array.min()) >= -32768 and float(array.max()) <= 32767
    integral = integral and bool(np.all(np.equal(np.mod(array, 1), 0)))
    dtype = np.int16 if integral else np.float32
    data = torch.from_numpy(np.ascontiguousarray(array.astype(dtype, copy=False)))[None]
    return tio.ScalarImage(tensor=data, affine=_LPS_TO_RAS @ volume.affine)


def _overrides(input_size: Optional[int]) -> dict:
    return {} if input_size is None else {"input_size": int(input_size)}


class _AbsentMeta(type):
    """Attributes of a stand-in class are stand-in classes too (``InterpolationMode.NEAREST``)."""

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _absent_class(f"{cls.__qualname__}.{attr}")


def _absent_class(qualname: str) -> type:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - the class's constructor
        raise RuntimeError(f"torchvision is not installed: {qualname} is unavailable")

    return _AbsentMeta(qualname.rsplit(".", 1)[-1], (), {"__init__": __init__, "__qualname__": qualname})


class _AbsentTorchvision:
    """Import hook serving a stand-in ``torchvision`` package while ``colipri`` is imported (see :func:`import_reference`).

    Every ``torchvision.*`` module is an empty module whose missing attributes are stand-in
    classes; building or calling one raises.  timm only names them in its tables and dataset
    helpers; COLIPRI's image encoder uses none of them.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        import importlib.machinery  # noqa: PLC0415 - only needed here

        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)  # type: ignore[arg-type]
        return None

    def create_module(self, spec: Any) -> Any:
        import types  # noqa: PLC0415 - only needed here

        module = types.ModuleType(spec.name)
        module.__path__ = []

        def __getattr__(attr: str) -> Any:  # noqa: N807 - module-level __getattr__ (PEP 562)
            if attr.startswith("__"):
                raise AttributeError(attr)

            absent = _absent_class(f"{spec.name}.{attr}")
            setattr(module, attr, absent)
            return absent

        setattr(module, "__getattr__", __getattr__)  # noqa: B010 - PEP 562 hook on a module object
        return module

    def exec_module(self, module: Any) -> None:
        return None


def import_reference() -> None:
    """Import ``colipri`` (and so ``timm``) whether or not torchvision is installed.

    ``timm`` -- under ``dynamic-network-architectures``' Primus -- imports torchvision at import
    time (``FrozenBatchNorm2d`` for its norm tables, datasets and transforms for its data helpers);
    COLIPRI's image encoder uses none of it.  PyPI has no CPU torchvision for Linux, and a CUDA one
    beside the CPU torch breaks every later ``import transformers``, so the ``published`` extra
    leaves it out.  When torchvision is missing, :class:`_AbsentTorchvision` serves stand-in modules
    for the duration of the import; they are removed from ``sys.modules`` afterwards, so nothing
    else (e.g. transformers) believes torchvision is installed.  With a real torchvision,
    :func:`ensure_torchvision_importable` repairs a build that does not match torch instead.
    """
    import importlib.util  # noqa: PLC0415 - only needed here
    import sys  # noqa: PLC0415 - only needed here

    if "colipri" in sys.modules:
        return
    if importlib.util.find_spec("torchvision") is not None:
        ensure_torchvision_importable()
        import colipri  # noqa: F401, PLC0415 - the import is the point
        import torchio  # noqa: F401, PLC0415 - the import is the point

        return
    hook = _AbsentTorchvision()
    sys.meta_path.insert(0, hook)
    try:
        import colipri  # noqa: F401, PLC0415 - the import is the point
        import torchio  # noqa: F401, PLC0415 - the import is the point
    finally:
        sys.meta_path.remove(hook)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        logger.info("imported colipri without torchvision (stand-in modules during the import only)")


class ColipriEncoder(ImageEncoder):
    """COLIPRI's image side at run time: the package's model and preprocessing, prompt embeddings from the release.

    The backbone runs once per input (the last input's features are kept), so ``embed``,
    ``findings`` and ``dense_maps`` on the same ``x`` cost one forward pass.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        positive: torch.Tensor,
        negative: torch.Tensor,
        *,
        untrained: bool,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.positive = positive.to(device)
        self.negative = negative.to(device)
        self.untrained = bool(untrained)
        self._last: Optional[tuple[Any, Any]] = None
        self._last_affine: Optional[np.ndarray] = None

    # ---------------------------------------------------------------- preprocessing
    def preprocess(self, volume: Volume) -> torch.Tensor:
        """The package's torchio transform (RAS, 2 mm, clamp, rescale to -1..1, crop/pad) on the volume."""
        out = self.processor.process_images(volume_to_tio(volume))
        self._last_affine = np.asarray(out[0].affine, dtype=np.float64)
        return self.processor.to_images_batch(out)

    def input_affine(self, volume: Volume) -> np.ndarray:
        """Index-to-LPS affine of the last preprocessed input (torchio's index order)."""
        if self._last_affine is None:
            self.preprocess(volume)
        assert self._last_affine is not None
        return _LPS_TO_RAS @ self._last_affine

    # ---------------------------------------------------------------- forward
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)

        if self._last is not None and self._last[0] is x:
            return self._last[1]
        with torch.no_grad():
            feats = self.model.image_encoder.encode(x.to(self.device))
        self._last = (x, feats)
        return feats

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``model.encode_image(x, pool=True, project=True)`` (768 values per image, not normalised)."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        from einops import rearrange  # noqa: PLC0415 - optional heavy dependency (torch etc.)

        enc = self.model.image_encoder
        with torch.no_grad():
            projected = enc.projector(self._features(x))
            return enc.pooler(rearrange(projected, "b c x y z -> b (x y z) c"))

    def findings(self, x: torch.Tensor) -> dict[str, float]:
        """Zero-shot probability per finding: softmax over the (positive, negative) prompt similarities."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        import torch.nn.functional as F  # noqa: PLC0415, N812 - optional heavy dependency (torch etc.)

        with torch.no_grad():
            emb = F.normalize(self.embed(x), dim=1)[0]
            temperature = self.model.softmax_temperature.float()
            probs = binary_softmax(self.positive @ emb / temperature, self.negative @ emb / temperature)
        return {name: float(p) for name, p in zip(FINDINGS, probs.tolist())}

    def dense_maps(self, x: torch.Tensor, names: Sequence[str]) -> Optional[DenseMaps]:
        """Patch-text cosine similarity to each finding's positive prompt (the package's dense pooler path)."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        import torch.nn.functional as F  # noqa: PLC0415, N812 - optional heavy dependency (torch etc.)

        if self._last_affine is None:
            raise ValueError("dense_maps needs the input made by preprocess()")
        enc = self.model.image_encoder
        with torch.no_grad():
            dense = enc.pooler.to_dense()(enc.projector(self._features(x)))
            dense = F.normalize(dense, dim=1)[0]  # (C, X, Y, Z)
            maps = {}
            for name in names:
                idx = FINDINGS.index(name)
                maps[name] = torch.einsum("cxyz,c->xyz", dense, self.positive[idx]).float().cpu().numpy()
        patch = np.asarray(self.model.patch_size, dtype=np.float64)
        grid = self._last_affine.copy()  # input index -> RAS; patch centre i -> input index i*p + (p-1)/2
        grid[:3, 3] = self._last_affine[:3, :3] @ ((patch - 1) / 2.0) + self._last_affine[:3, 3]
        grid[:3, :3] = self._last_affine[:3, :3] * patch
        return DenseMaps(maps=maps, affine=_LPS_TO_RAS @ grid)


@dataclass(frozen=True)
class ColipriSpec(PublishedSpec):
    """COLIPRI: MIT weights; model card: research only, not for clinical practice."""

    def make_test_snapshot(self, dir: Path, seed: int = 0, *, input_size: Optional[int] = None) -> None:
        """Random weights in the published ``model.safetensors`` layout + a tiny BERT config/tokenizer.

        The image side has the real architecture (all keys and shapes of the published file);
        the text side is a 1-layer BERT of the real width with a vocabulary of the prompt words.
        """
        import_reference()
        import colipri  # noqa: PLC0415 - optional heavy dependency (the published extra)
        import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        from colipri.model.text import TextEncoder  # noqa: PLC0415 - optional heavy dependency
        from colipri.pooling import AttentionPool1D  # noqa: PLC0415 - optional heavy dependency
        from safetensors.torch import save_file  # noqa: PLC0415 - optional heavy dependency
        from transformers import BertConfig, BertModel, BertTokenizer  # noqa: PLC0415 - optional heavy dependency

        out = Path(dir)
        (out / TEXT_DIR).mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        model = colipri.get_model(pretrained=False, image_only=True, **_overrides(input_size))
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        words = sorted({w for pair in read_prompts(None, TEMPLATE).values() for p in pair for w in p.split()})
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
        (out / TEXT_DIR / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        BertTokenizer(str(out / TEXT_DIR / "vocab.txt"), do_lower_case=True).save_pretrained(str(out / TEXT_DIR))
        cfg = BertConfig(
            vocab_size=len(vocab),
            hidden_size=PROJECTION_DIM,
            num_hidden_layers=1,
            num_attention_heads=12,
            intermediate_size=256,
            max_position_embeddings=512,
        )
        cfg.save_pretrained(str(out / TEXT_DIR))
        text = TextEncoder(BertModel(cfg, add_pooling_layer=False), AttentionPool1D(PROJECTION_DIM, 12))
        state.update({_TEXT_PREFIX + k: v.detach().contiguous() for k, v in text.state_dict().items()})
        save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
        (out / SNAPSHOT_MARKER).write_text(
            json.dumps({"model": self.name, "seed": seed, "untrained": True, "input_size": input_size}) + "\n",
            encoding="utf-8",
        )
        logger.info("wrote a COLIPRI test snapshot (random weights) to %s", out)

    def import_release(
        self, source: Path, out: Path, *, prompts: Optional[Path] = None, input_size: Optional[int] = None
    ) -> dict:
        """Verify ``source`` (the download), embed the prompts once, write the release to ``out``."""
        import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        from safetensors.torch import load_file, save_file  # noqa: PLC0415 - optional heavy dependency

        source, out = Path(source), Path(out)
        weights = source / WEIGHTS
        if not weights.is_file():
            raise WeightsError(f"{source}: no {WEIGHTS} (download microsoft/colipri's {WEIGHTS} into it)")
        if not (source / TEXT_DIR / "config.json").is_file():
            raise WeightsError(
                f"{source}: no {TEXT_DIR}/config.json (download microsoft/BiomedVLP-CXR-BERT-specialized's "
                f"config.json, vocab.txt and tokenizer_config.json at revision {TEXT_REVISION} into {TEXT_DIR}/)"
            )
        marker = source / SNAPSHOT_MARKER
        untrained = marker.is_file()
        if untrained and input_size is None:
            input_size = json.loads(marker.read_text(encoding="utf-8")).get("input_size")
        state = load_file(str(weights))
        image = {k: v for k, v in state.items() if not k.startswith(_TEXT_PREFIX)}
        text = {k[len(_TEXT_PREFIX) :]: v for k, v in state.items() if k.startswith(_TEXT_PREFIX)}
        verify_state_dict(image, self.name, allowed_extra=self.known_extra_keys, origin=str(weights))
        table = read_prompts(prompts, TEMPLATE)
        positive, negative = _embed_prompts(source / TEXT_DIR, text, table, str(weights))
        files = {WEIGHTS: sha256_file(weights)}
        files.update(
            {
                p.relative_to(source).as_posix(): sha256_file(p)
                for p in sorted((source / TEXT_DIR).rglob("*"))
                if p.is_file()
            }
        )
        temperature = float(image["softmax_temperature"]) if "softmax_temperature" in image else 1.0
        section = published_section(
            self,
            files,
            untrained=untrained,
            prompts=table,
            extra={
                "reference_package": f"colipri=={PACKAGE_VERSION}",
                "text_model": f"microsoft/BiomedVLP-CXR-BERT-specialized@{TEXT_REVISION}",
                "prompt_template": list(TEMPLATE) if prompts is None else f"site file {Path(prompts).name}",
                "softmax_temperature": temperature,
                "input_size": input_size,
                "embedding": "model.encode_image(images, pool=True, project=True), 768 values",
            },
        )
        with tempfile.TemporaryDirectory() as tmp:
            img_path, prompt_path = Path(tmp) / IMAGE_FILE, Path(tmp) / PROMPT_FILE
            save_file({k: v.contiguous() for k, v in image.items()}, str(img_path), metadata={"format": "pt"})
            save_prompt_embeddings(prompt_path, positive, negative, table)
            del state, text
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            write_published_release(
                out,
                {IMAGE_FILE: img_path, PROMPT_FILE: prompt_path},
                section,
                untrained=untrained,
                notes="UNTRAINED - TEST OUTPUT (random weights)" if untrained else "",
            )
        return section

    def load(
        self, release: Path, device: Union[str, torch.device] = "cpu", *, allow_untrained: bool = True
    ) -> ColipriEncoder:
        """The run-time encoder of a release; only local files are read (no hub)."""
        import_reference()
        import colipri  # noqa: PLC0415 - optional heavy dependency (the published extra)

        manifest = load_published_release(release, allow_untrained=allow_untrained)
        pub = manifest["published"]
        if pub["model"] != self.name:
            raise WeightsError(f"{release}: release is for {pub['model']!r}, not {self.name!r}")
        overrides = _overrides(pub.get("input_size"))
        model = colipri.get_model(checkpoint_path=Path(release) / IMAGE_FILE, image_only=True, **overrides)
        processor = colipri.get_processor(image_only=True, **overrides)
        positive, negative = load_prompt_embeddings(Path(release) / PROMPT_FILE)
        return ColipriEncoder(
            model, processor, positive, negative, untrained=bool(manifest["untrained"]), device=device
        )


def _embed_prompts(
    text_dir: Path, text_state: dict, table: dict[str, tuple[str, str]], origin: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run COLIPRI's text side (the package's ``TextEncoder``, BERT from the local config) once on the prompts."""
    import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    import_reference()
    from colipri.model.text import TextEncoder  # noqa: PLC0415 - optional heavy dependency
    from colipri.pooling import AttentionPool1D  # noqa: PLC0415 - optional heavy dependency
    from transformers import BertConfig, BertModel, BertTokenizer  # noqa: PLC0415 - optional heavy dependency

    cfg = BertConfig.from_pretrained(str(text_dir), local_files_only=True)
    encoder = TextEncoder(BertModel(cfg, add_pooling_layer=False), AttentionPool1D(PROJECTION_DIM, 12)).eval()
    state = {k: v for k, v in text_state.items() if not k.endswith("embeddings.position_ids")}  # buffer, not a weight
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{origin}: text weights do not fit CXR-BERT of {text_dir}/config.json: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    tokenizer = BertTokenizer.from_pretrained(str(text_dir), local_files_only=True)
    out = []
    for column in (0, 1):
        texts = [table[name][column] for name in FINDINGS]
        # as colipri.processor.Processor.process_text does it
        enc = tokenizer(texts, max_length=512, padding="max_length", truncation=True, return_tensors="pt")
        with torch.no_grad():
            out.append(encoder(enc["input_ids"], enc["attention_mask"], pool=True, normalize=True))
    return out[0], out[1]


def image_key_list(input_size: Optional[int] = None) -> dict[str, list[int]]:
    """Key/shape list of the package's image-only model (what ``data/published/colipri-keys.json`` holds)."""
    import_reference()
    import colipri  # noqa: PLC0415 - optional heavy dependency (the published extra)

    return key_list_of(colipri.get_model(pretrained=False, image_only=True, **_overrides(input_size)).state_dict())


COLIPRI = ColipriSpec(
    name="colipri",
    title="COLIPRI (Microsoft) chest-CT vision-language encoder",
    version="microsoft/colipri (COLIPRI-CRM), colipri==0.1.3",
    source="https://huggingface.co/microsoft/colipri",
    licence="MIT",
    needs_licence_acceptance=False,
    restriction_note="Model card: shared for research purposes only; not meant to be used for clinical practice.",
    reported=(
        Reported(
            "macro AUROC, 18 findings (linear probe)",
            0.85,
            "CT-RATE",
            "independent benchmark, as quoted in the published-models brief (approximate); COLIPRI zero-shot numbers not found",
        ),
    ),
)
