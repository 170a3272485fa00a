"""The published-model analyzer: COLIPRI / CT-CLIP / Merlin served from a release a site imported.

The deep analyzer's setting (``NEURORADIX_WEIGHTS_DIR`` / ``--weights``) names the release; when
its manifest has a ``published`` section (:func:`neuroradix.models.release.is_published_release`)
the registry builds this analyzer instead of :class:`~neuroradix.analyzers.deep.DeepAnalyzer`.

``analyze(volume)`` runs the model's own preprocessing and one forward pass and returns the 18
CT-RATE findings (probabilities from the stored prompt embeddings or a ClassFine head), the global
image embedding (``StudyResult.embedding`` -> ``results.json``), and, where the model has them
(COLIPRI), patch-text similarity maps of the present findings as attention maps (Parametric
Maps).  The licence and any model-card restriction are stated in the report text and as a
warning on every result; an untrained (test-snapshot) release is refused unless
``allow_untrained`` and then marks every object UNTRAINED.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
from scipy import ndimage

from neuroradix.errors import NotConfiguredError
from neuroradix.models.findings import load_findings
from neuroradix.models.published import get_spec
from neuroradix.models.published.base import FINDINGS, DenseMaps, ImageEncoder
from neuroradix.models.release import load_published_release
from neuroradix.types import AnalyzerInfo, AttentionMap, Code, Finding, StudyResult, Volume

logger = logging.getLogger(__name__)

__all__ = ["PublishedAnalyzer", "licence_notice", "SIMILARITY_QUANTITY"]

SIMILARITY_QUANTITY = Code("130404", "DCM", "Saliency")
SIMILARITY_UNIT = Code("1", "UCUM", "no units")
NC_LICENCE = "CC-BY-NC-SA-4.0"


def licence_notice(published: dict) -> str:
    """One sentence on the weights' licence and restriction, for the report text and the warnings."""
    licence = str(published["licence"])
    text = f"Model {published['model']} ({published['version']}), weights licence {licence}"
    if licence.upper() == NC_LICENCE:
        text += " (non-commercial licence)"
    restriction = str(published.get("restriction") or "").strip()
    return text + (f"; {restriction}" if restriction else ".")


def _map_on_grid(
    values: np.ndarray, src_affine: np.ndarray, shape: tuple[int, int, int], affine: np.ndarray
) -> np.ndarray:
    """Resample ``values`` (index -> LPS by ``src_affine``) onto ``shape``/``affine`` (linear, 0 outside)."""
    target = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    points = target @ affine[:3, :3].T + affine[:3, 3]
    inv = np.linalg.inv(src_affine)
    index = points @ inv[:3, :3].T + inv[:3, 3]
    out = ndimage.map_coordinates(values.astype(np.float32), index.T, order=1, mode="constant", cval=0.0)
    return out.reshape(shape)


class PublishedAnalyzer:
    """Runs a published model's release; see the module docstring.

    Parameters
    ----------
    release_dir:
        A release written by ``neuroradix weights import``.
    allow_untrained:
        Test-only switch: accept a release made from a test snapshot (random weights).
    device:
        ``"auto"``, ``"cpu"`` or ``"cuda[:n]"``.
    attention_voxel_mm:
        Voxel size of the similarity maps' grid (the source orientation, integer subsampling).
    max_finding_maps:
        At most this many present findings (most probable first) get a stored similarity map.
    """

    def __init__(
        self,
        release_dir: Union[str, Path, None],
        *,
        allow_untrained: bool = False,
        device: str = "auto",
        attention_voxel_mm: float = 4.0,
        max_finding_maps: int = 4,
    ) -> None:
        if release_dir is None:
            raise NotConfiguredError("no weights release configured for the published-model analyzer")
        self.release_dir = Path(release_dir)
        self.manifest = load_published_release(self.release_dir, allow_untrained=allow_untrained)
        self.published = dict(self.manifest["published"])
        self.spec = get_spec(str(self.published["model"]))
        self.untrained = bool(self.manifest["untrained"])
        self.device = _resolve_device(device)
        self.attention_voxel_mm = float(attention_voxel_mm)
        self.max_finding_maps = int(max_finding_maps)
        self.notice = licence_notice(self.published)
        self.info = AnalyzerInfo(
            name=f"{self.spec.name}-published",
            version=str(self.manifest["version"]),
            title=self.spec.title + (" (UNTRAINED - TEST OUTPUT)" if self.untrained else ""),
            algorithm_family=Code("123110", "DCM", "Artificial Intelligence"),
            untrained=self.untrained,
        )
        self.catalogue = load_findings()
        self._encoder: Optional[ImageEncoder] = None
        if self.untrained:
            logger.warning(
                "published-model analyzer runs an UNTRAINED release of %s (test output only)", self.spec.name
            )

    def _load(self) -> ImageEncoder:
        if self._encoder is None:
            self._encoder = self.spec.load(self.release_dir, self.device)
        return self._encoder

    def attention_geometry(self, volume: Volume) -> tuple[tuple[int, int, int], np.ndarray]:
        """Shape and affine of the maps' grid: the source grid subsampled to ~attention_voxel_mm."""
        factors = [max(1, int(round(self.attention_voxel_mm / s))) for s in volume.spacing]
        shape = tuple(int(np.ceil(n / f)) for n, f in zip(volume.shape, factors))
        affine = volume.affine.copy()
        affine[:3, :3] = volume.affine[:3, :3] * np.asarray(factors, dtype=np.float64)
        affine[:3, 3] = volume.affine[:3, :3] @ ((np.asarray(factors) - 1) / 2.0) + volume.affine[:3, 3]
        return shape, affine  # type: ignore[return-value]

    def analyze(self, volume: Volume) -> StudyResult:
        """Findings, embedding and similarity maps of one CT volume (HU, LPS geometry)."""
        if not isinstance(volume, Volume):
            raise TypeError("volume must be a neuroradix.types.Volume")
        encoder = self._load()
        timings = {}
        t0 = time.perf_counter()
        x = encoder.preprocess(volume)
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        embedding = encoder.embed(x)
        probs = encoder.findings(x)
        timings["forward"] = time.perf_counter() - t0
        present = sorted((n for n in FINDINGS if probs[n] >= 0.5), key=lambda n: -probs[n])[: self.max_finding_maps]
        t0 = time.perf_counter()
        dense = encoder.dense_maps(x, present) if present else None
        maps = self._maps(dense, volume)
        timings["maps"] = time.perf_counter() - t0
        names = [m.name for m in maps]
        findings = tuple(
            Finding(
                name=s.name,
                probability=float(np.clip(probs[s.name], 0.0, 1.0)),
                code=s.code,
                site=s.site,
                segment_labels=s.segment_labels,
                attention_index=names.index(s.name) if s.name in names else None,
            )
            for s in self.catalogue.findings
            if s.name in probs
        )
        listed = ", ".join(f"{n} {probs[n]:.2f}" for n in sorted(probs, key=lambda n: -probs[n]) if probs[n] >= 0.5)
        report = (
            f"{self.spec.title}: zero-shot findings from the authors' published weights "
            f"(reported performance only, not validated on this site's studies). "
            f"Findings at or above 0.5: {listed or 'none'}. {self.notice}"
        )
        warnings = [self.notice]
        if self.untrained:
            warnings.append("UNTRAINED - TEST OUTPUT: random weights from a test snapshot")
        logger.info("published analyzer (%s): timings %s", self.spec.name, {k: round(v, 2) for k, v in timings.items()})
        return StudyResult(
            analyzer=self.info,
            labels=np.zeros(volume.shape, dtype=np.uint8),
            segments=(),
            findings=findings,
            report_text=report,
            attention=tuple(maps),
            extra={
                "model": {
                    "name": self.spec.name,
                    "version": self.manifest["version"],
                    "untrained": self.untrained,
                    "licence": self.published["licence"],
                    "restriction": self.published.get("restriction", ""),
                    "reported": self.published.get("reported", []),
                },
                "segmentation": f"none (published model {self.spec.name} does not segment)",
                "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
            },
            warnings=tuple(warnings),
            embedding=tuple(float(v) for v in embedding.detach().float().cpu().reshape(-1).tolist()),
        )

    def _maps(self, dense: Optional[DenseMaps], volume: Volume) -> list[AttentionMap]:
        """The dense similarity maps on the source-oriented map grid; negative similarity shown as 0."""
        if dense is None:
            return []
        shape, affine = self.attention_geometry(volume)
        out = []
        for name, values in dense.maps.items():
            grid = np.clip(_map_on_grid(np.asarray(values), dense.affine, shape, affine), 0.0, None)
            out.append(
                AttentionMap(
                    name,
                    grid.astype(np.float32),
                    affine,
                    SIMILARITY_QUANTITY,
                    SIMILARITY_UNIT,
                    note=f"{self.spec.name} patch-text {dense.unit_meaning}",
                )
            )
        return out


def _resolve_device(device: str) -> str:
    import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
