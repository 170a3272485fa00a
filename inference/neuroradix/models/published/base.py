"""The framework every published chest-CT model (COLIPRI, CT-CLIP, Merlin) plugs into.

A published model is described by a :class:`PublishedSpec` (one instance per model, in
:data:`neuroradix.models.published.REGISTRY`).  Its life in the node has three steps:

1. ``make_test_snapshot(dir)`` -- a folder laid out like the authors' download, random weights
   in the published key layout (tests, CI, rehearsing the import);
2. ``import_release(source, out, prompts=...)`` -- the downloaded folder becomes a verified
   release: image-encoder weights checked **strictly** against the committed key/shape list
   ``neuroradix/data/published/<model>-keys.json`` (:func:`verify_state_dict`), the text side run
   once to store the prompt embeddings of the 18 CT-RATE findings (:data:`PROMPT_FILE`), and a
   manifest written by :func:`neuroradix.models.release.write_published_release` with its
   ``published`` section (:func:`published_section`);
3. ``load(release, device)`` -- the :class:`ImageEncoder` the analyzer runs: ``preprocess`` (the
   authors' exact preprocessing of the node's :class:`~neuroradix.types.Volume`), ``embed``
   (the global image embedding as the reference returns it), ``findings`` (18 probabilities)
   and, where the model has them, ``dense_maps``.

Numbers quoted from papers are :class:`Reported` -- labelled *reported*, never validated here.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, Sequence, Union

import numpy as np

from neuroradix.errors import WeightsError
from neuroradix.models.findings import load_findings

if TYPE_CHECKING:  # torch is an optional heavy dependency; only the type names are needed here
    import torch

    from neuroradix.types import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "FINDINGS",
    "PROMPT_FILE",
    "KEYS_DIR",
    "Reported",
    "DenseMaps",
    "ImageEncoder",
    "PublishedSpec",
    "load_key_list",
    "key_list_of",
    "verify_state_dict",
    "read_prompts",
    "published_section",
    "save_prompt_embeddings",
    "load_prompt_embeddings",
    "binary_softmax",
    "ensure_torchvision_importable",
]

FINDINGS: tuple[str, ...] = tuple(n for n in load_findings("ct-rate-18").names if n != "Abnormal")
"""The 18 CT-RATE findings, in the catalogue's order (what every published model scores)."""

PROMPT_FILE = "prompt_embeddings.safetensors"
"""Release file with the prompt embeddings: tensors ``positive`` and ``negative``, ``(18, D)``."""

KEYS_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "published"
"""Committed key/shape lists: ``<model>-keys.json``."""


@dataclass(frozen=True)
class Reported:
    """A number quoted from the authors or an independent benchmark -- *reported*, not measured here."""

    metric: str  # e.g. "macro AUROC (linear probe)"
    value: float
    dataset: str  # e.g. "CT-RATE internal validation"
    source: str  # citation / URL

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "value": self.value,
            "dataset": self.dataset,
            "source": self.source,
            "label": "reported",
        }


@dataclass(frozen=True)
class DenseMaps:
    """Patch-level similarity maps for some findings, on the model's input grid.

    ``maps[name]`` has shape ``(slices, rows, columns)`` in the node's index order; ``affine``
    maps that grid's indices to LPS millimetres (like :class:`~neuroradix.types.Volume`).
    """

    maps: Mapping[str, np.ndarray]
    affine: np.ndarray
    unit_meaning: str = "cosine similarity"


class ImageEncoder(ABC):
    """What :meth:`PublishedSpec.load` returns; everything the analyzer needs at run time."""

    untrained: bool = False

    @abstractmethod
    def preprocess(self, volume: Volume) -> torch.Tensor:
        """The model's input ``(1, 1, ...)`` made from the node's volume exactly as the authors' code does."""

    @abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global image embedding ``(1, D)``, exactly as the reference returns it."""

    @abstractmethod
    def findings(self, x: torch.Tensor) -> dict[str, float]:
        """Probability of each of the 18 :data:`FINDINGS` (from prompt embeddings or a ClassFine head)."""

    def dense_maps(self, x: torch.Tensor, names: Sequence[str]) -> Optional[DenseMaps]:
        """Patch-text similarity maps of ``names`` on the input grid; ``None`` when the model has none."""
        return None

    def input_affine(self, volume: Volume) -> np.ndarray:
        """Index-to-LPS affine of the preprocessed input grid (for dense maps)."""
        raise NotImplementedError


@dataclass(frozen=True)
class PublishedSpec(ABC):
    """One published model: its licence and reported numbers, and how to snapshot, import and load it."""

    name: str  # "colipri" | "ct-clip" | "merlin"
    title: str
    version: str  # the published release's version / revision
    source: str  # where a site downloads it
    licence: str  # SPDX-ish id, e.g. "MIT", "CC-BY-NC-SA-4.0"
    needs_licence_acceptance: bool
    restriction_note: str  # e.g. model card: research only, not for clinical practice
    reported: tuple[Reported, ...] = ()
    known_extra_keys: tuple[str, ...] = field(default=())  # allowed in the download, not in the key list
    accept_token: ClassVar[str] = ""  # the --accept-license value, lower case, when acceptance is needed

    @abstractmethod
    def make_test_snapshot(self, dir: Path, seed: int = 0) -> None:
        """Write a folder laid out like the published download, with random weights (and a tiny text side)."""

    @abstractmethod
    def import_release(self, source: Path, out: Path, *, prompts: Optional[Path] = None) -> dict:
        """Turn a downloaded folder into a verified release at ``out``; return the manifest's ``published`` section."""

    @abstractmethod
    def load(self, release: Path, device: Union[str, torch.device] = "cpu") -> ImageEncoder:
        """The run-time image encoder of a release made by :meth:`import_release`."""

    def check_acceptance(self, accepted: Optional[str]) -> None:
        """Refuse a licence that needs acceptance unless ``accepted`` names it (case-insensitive)."""
        if not self.needs_licence_acceptance:
            return
        want = (self.accept_token or self.licence).lower()
        if (accepted or "").strip().lower() != want:
            raise WeightsError(
                f"{self.name}: weights are licensed {self.licence} ({self.restriction_note}); "
                f"pass --accept-license {want} to import them"
            )


# ---------------------------------------------------------------------------- key lists


def key_list_of(state: Mapping[str, Any]) -> dict[str, list[int]]:
    """``{key: shape}`` of a state dict (what the committed key lists hold)."""
    return {k: [int(n) for n in v.shape] for k, v in sorted(state.items())}


def load_key_list(model: str) -> dict[str, list[int]]:
    """The committed key/shape list of ``model``'s image weights."""
    path = KEYS_DIR / f"{model}-keys.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: [int(n) for n in v] for k, v in data["keys"].items()}


def verify_state_dict(
    state: Mapping[str, Any], model: str, *, allowed_extra: Sequence[str] = (), origin: str = ""
) -> None:
    """Check ``state`` has exactly the committed keys and shapes of ``model`` (plus allowed extras).

    Raises
    ------
    WeightsError
        A key missing, a key not in the list nor in ``allowed_extra``, or a shape that differs;
        the message names the first few.
    """
    want = load_key_list(model)
    have = key_list_of(state)
    missing = sorted(set(want) - set(have))
    extra = sorted(k for k in set(have) - set(want) if k not in set(allowed_extra))
    shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[:3]})")
        if shapes:
            parts.append("shapes differ: " + ", ".join(f"{k} {have[k]} != {want[k]}" for k in shapes[:3]))
        raise WeightsError(f"{origin or model}: image weights do not match the {model} key list: " + "; ".join(parts))


# ---------------------------------------------------------------------------- prompts


def read_prompts(path: Optional[Path], template: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """Positive/negative prompt per finding: the model's ``template`` or a site's JSON file.

    ``template`` is ``(positive, negative)`` with ``{finding}`` (lower-cased name) in each.  The
    file, when given, is ``{"<finding>": {"positive": "...", "negative": "..."}}`` and must cover
    all 18 :data:`FINDINGS`.
    """
    if path is None:
        return {n: (template[0].format(finding=n.lower()), template[1].format(finding=n.lower())) for n in FINDINGS}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [n for n in FINDINGS if n not in data]
    if missing:
        raise ValueError(f"{path}: prompts missing for {missing}")
    return {n: (str(data[n]["positive"]), str(data[n]["negative"])) for n in FINDINGS}


def save_prompt_embeddings(path: Path, positive: torch.Tensor, negative: torch.Tensor, prompts: Mapping) -> None:
    """Store ``(18, D)`` positive/negative prompt embeddings (safetensors, prompts in the metadata)."""
    from safetensors.torch import save_file  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    if positive.shape != negative.shape or positive.shape[0] != len(FINDINGS):
        raise ValueError(
            f"prompt embeddings must be (18, D) each, got {tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    save_file(
        {"positive": positive.detach().float().contiguous(), "negative": negative.detach().float().contiguous()},
        str(path),
        metadata={
            "findings": json.dumps(list(FINDINGS)),
            "prompts": json.dumps({k: list(v) for k, v in prompts.items()}),
        },
    )


def load_prompt_embeddings(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` prompt embeddings of a release; checks the finding order."""
    from safetensors import safe_open  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if json.loads(meta.get("findings", "[]")) != list(FINDINGS):
            raise WeightsError(f"{path}: prompt embeddings are not for the 18 CT-RATE findings in this order")
        return fh.get_tensor("positive"), fh.get_tensor("negative")


def binary_softmax(pos_logit: torch.Tensor, neg_logit: torch.Tensor) -> torch.Tensor:
    """Probability of the positive prompt from a softmax over (positive, negative) logits."""
    import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    return torch.softmax(torch.stack([pos_logit, neg_logit], dim=-1), dim=-1)[..., 0]


def published_section(
    spec: PublishedSpec,
    files: Mapping[str, str],
    *,
    untrained: bool,
    prompts: Mapping[str, tuple[str, str]],
    extra: Optional[Mapping[str, Any]] = None,
) -> dict:
    """The manifest's ``published`` section.

    ``files`` maps each imported source file (relative to the download) to its sha256.
    """
    return {
        "model": spec.name,
        "title": spec.title,
        "version": spec.version,
        "source": spec.source,
        "source_sha256": dict(files),
        "licence": spec.licence,
        "restriction": spec.restriction_note,
        "reported": [r.to_dict() for r in spec.reported],
        "untrained": bool(untrained),
        "findings": list(FINDINGS),
        "prompts": {k: list(v) for k, v in prompts.items()},
        **dict(extra or {}),
    }


_TORCHVISION_SHIM: list = []  # keeps the schema-only library alive for the process


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` work when its C++ ops cannot load; ``True`` when the shim was needed.

    ``timm`` (under COLIPRI's Primus, and Merlin's I3ResNet) imports torchvision, whose ``__init__``
    registers fake kernels for ``torchvision::nms`` / ``qnms`` unconditionally.  When the installed
    torchvision build does not match torch (a CUDA torchvision beside the CPU torch wheel: PyPI has
    no CPU build of torchvision for Linux), its C++ library does not load, those ops do not exist,
    and the import fails with ``operator torchvision::nms does not exist``.  Neither model uses
    torchvision's ops, so this defines the two schemas (no kernels: calling them fails) and imports
    again.  Call it before importing ``colipri`` / ``merlin``.  Without torchvision it does nothing.
    """
    import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    try:
        import torchvision  # noqa: F401, PLC0415 - the import is the check
    except ImportError:  # not installed: nothing to repair (timm users: colipri.import_reference)
        return False
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        if not _TORCHVISION_SHIM:
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _TORCHVISION_SHIM.append(lib)
        logger.warning("torchvision's C++ ops do not load (build differs from torch's); importing it without them")
        import torchvision  # noqa: F401, F811, PLC0415 - second try, with the schemas defined

        return True
    return False
