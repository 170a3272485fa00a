"""The deep-learning analyzer: image encoder (SwinUNETR segmentation + patch embeddings, or another
encoder's tokens) -> multitask head.

The release's manifest names the encoder (:mod:`neuroradix.models.release`).  A SwinUNETR release runs the
sliding-window pass (labels and window embeddings at once).  Any other encoder
(:mod:`neuroradix.models.encoders`: the pretrained I3ResNet-152s of Merlin and Astra, the ViT) runs
its own preprocessing and forward pass; its tokens are the head's patches and its token grid is
the attention maps' grid (:meth:`~neuroradix.models.encoders.base.Encoder.patch_grid`).  Those
encoders do not segment: the label map is empty and ``extra["segmentation"]`` says so.

``DeepAnalyzer(release_dir)`` verifies the release when it is built.  It raises
:class:`~neuroradix.errors.NotConfiguredError` **on construction** when there is no release or
the release is untrained and ``allow_untrained`` is false, so the node never runs it and
writes nothing from it (the registry records the reason); a release that does not match its
manifest raises :class:`~neuroradix.errors.WeightsError`.  With an untrained release and
``allow_untrained=True`` it runs and sets ``AnalyzerInfo.untrained``.

``analyze(volume)`` returns a :class:`~neuroradix.types.StudyResult` with the 43-class label
map on the source grid, 19 findings (18 CT-RATE + "Abnormal"), the generated report, and
attention maps: one for "Abnormal" and for each of the (at most ``max_finding_maps``) most probable
present findings (its cls query's attention over patches), and one for the report (token -> gen query -> patch, averaged over tokens).  Map values are relative attention:
patch weight times the number of patches (1 = uniform).  Per-token patch weights are in
``result.report_attention`` (:class:`~neuroradix.types.ReportAttention`); :func:`report_token_map`
renders one token's map -- the one place that does, for the analyzer and the API alike.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Union

import numpy as np
import torch

from neuroradix.errors import NotConfiguredError
from neuroradix.models.backbone import (
    forward_with_features,
)
from neuroradix.models.encoders.base import Encoder
from neuroradix.models.findings import load_findings
from neuroradix.models.release import load_release
from neuroradix.models.sliding import PatchGrid, SlidingOptions, sliding_segment
from neuroradix.models.transforms import (
    preprocess_volume,
)
from neuroradix.schemes import load_scheme
from neuroradix.types import AnalyzerInfo, AttentionMap, Code, Finding, ReportAttention, StudyResult, Volume

logger = logging.getLogger(__name__)

__all__ = ["DeepAnalyzer", "ATTENTION_QUANTITY", "ATTENTION_UNIT", "report_token_map", "report_patch_centres"]

ATTENTION_QUANTITY = Code("130404", "DCM", "Saliency")
ATTENTION_UNIT = Code("1", "UCUM", "no units")
NAME = "swinunetr-ctrate"
_TITLE = "SwinUNETR + BART chest-CT model"
_ENCODER_TITLES = {"merlin": "Merlin I3ResNet-152", "astra": "Astra I3ResNet-152", "vit": "3D ViT"}


def _relative_map(
    name: str, weights: np.ndarray, grid: PatchGrid, shape: tuple[int, int, int], affine: np.ndarray
) -> AttentionMap:
    """Patch weights (summing to 1) as a map of relative attention (1 = uniform) on ``shape``/``affine``."""
    rel = np.asarray(weights, dtype=np.float64) * len(grid)
    return AttentionMap(
        name, grid.stitch(rel, shape, affine).astype(np.float32), affine, ATTENTION_QUANTITY, ATTENTION_UNIT
    )


def report_token_map(attention: ReportAttention, index: int) -> AttentionMap:
    """The attention map of report token ``index`` on the attention grid.

    Parameters
    ----------
    attention:
        A result's :attr:`~neuroradix.types.StudyResult.report_attention` (or one read back from a job
        with :meth:`~neuroradix.types.ReportAttention.from_dict`).
    index:
        Token index, ``0 <= index < len(attention.tokens)``.

    Returns
    -------
    AttentionMap
        Relative attention (1 = uniform over the patches), named after the token.

    Raises
    ------
    IndexError
        When ``index`` is outside the tokens.
    """
    if not 0 <= index < len(attention.tokens):
        raise IndexError(f"token index {index} outside 0..{len(attention.tokens) - 1}")
    grid = PatchGrid.from_dict(attention.patch_grid)
    name = f"Report token {index}: {attention.tokens[index].strip() or '_'}"
    return _relative_map(name, attention.patch_attention[index], grid, attention.grid_shape, attention.grid_affine)


def report_patch_centres(attention: ReportAttention) -> np.ndarray:
    """Each patch's centre in patient coordinates (LPS, mm), shape ``(patches, 3)``."""
    return PatchGrid.from_dict(attention.patch_grid).centres_lps()


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class DeepAnalyzer:
    """Analyzer protocol implementation backed by a verified weights release.

    Parameters
    ----------
    release_dir:
        Folder of a release (:mod:`neuroradix.models.release`); ``None`` means not configured.
    allow_untrained:
        Test-only switch: accept a release marked untrained.
    device:
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:n]"``.
    sw_batch_size:
        Windows per backbone call.
    attention_voxel_mm:
        Voxel size of the attention maps' grid (source orientation, integer subsampling).
    """

    def __init__(
        self,
        release_dir: Union[str, Path, None],
        *,
        allow_untrained: bool = False,
        device: str = "auto",
        sw_batch_size: int = 4,
        attention_voxel_mm: float = 4.0,
        max_finding_maps: int = 4,
    ) -> None:
        if release_dir is None:
            raise NotConfiguredError("no weights release configured for the deep-learning analyzer")
        self.release = load_release(release_dir, allow_untrained=allow_untrained)
        self.device = _resolve_device(device)
        self.options = SlidingOptions(sw_batch_size=sw_batch_size)
        self.attention_voxel_mm = float(attention_voxel_mm)
        self.max_finding_maps = int(max_finding_maps)
        if self.attention_voxel_mm <= 0:
            raise ValueError(f"attention_voxel_mm must be positive, got {attention_voxel_mm}")
        self.encoder_name = self.release.encoder_name
        title = _TITLE
        if self.encoder_name != "swinunetr":
            title = f"{_ENCODER_TITLES.get(self.encoder_name, self.encoder_name)} + BART chest-CT model"
        self.info = AnalyzerInfo(
            name=NAME if self.encoder_name == "swinunetr" else f"{self.encoder_name}-ctrate",
            version=self.release.version,
            title=title + (" (UNTRAINED - TEST OUTPUT)" if self.release.untrained else ""),
            algorithm_family=Code("123110", "DCM", "Artificial Intelligence"),
            untrained=self.release.untrained,
        )
        self.scheme = load_scheme("chest-ct-43")
        self.catalogue = load_findings()
        self._models = None
        if self.release.untrained:
            logger.warning(
                "deep-learning analyzer runs an UNTRAINED release %s (test output only)", self.release.version
            )

    def _load(self):
        if self._models is None:
            self._models = self.release.build_models(self.device)
        return self._models

    # ------------------------------------------------------------------ analysis
    def analyze(self, volume: Volume) -> StudyResult:
        """Segment, classify and report one CT volume (HU, LPS geometry)."""

        if not isinstance(volume, Volume):
            raise TypeError("volume must be a neuroradix.types.Volume")
        backbone, head, _ = self._load()
        if isinstance(backbone, Encoder):
            return self._analyze_tokens(volume, backbone, head)
        cfg = self.release.config
        timings = {}
        t0 = time.perf_counter()
        grid_in = preprocess_volume(volume, cfg.preprocess, self.device)
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sliding = sliding_segment(
            grid_in.array,
            lambda x: forward_with_features(backbone, x),
            cfg.preprocess.patch_size,
            cfg.preprocess.overlap,
            cfg.preprocess.sigma_scale,
            grid_in.affine,
            self.options,
            self.device,
        )
        timings["segmentation_and_embeddings"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = grid_in.labels_to_source(sliding.labels)
        timings["labels_to_source"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        emb = sliding.embeddings[None].to(self.device)
        pos = torch.from_numpy(sliding.grid.positions())[None].to(self.device)
        texts, info = head.generate(emb, pos)
        timings["head_and_report"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = self._result(volume, labels, sliding.grid, texts[0], info, timings)
        timings["attention_maps"] = time.perf_counter() - t0
        logger.info(
            "deep analyzer: %d patches, timings %s", len(sliding.grid), {k: round(v, 2) for k, v in timings.items()}
        )
        return result

    @torch.no_grad()
    def _analyze_tokens(self, volume: Volume, encoder: Encoder, head) -> StudyResult:
        """A release on a non-segmenting encoder: its tokens -> head; an empty label map."""
        timings = {}
        t0 = time.perf_counter()
        x, input_affine = encoder.preprocess_volume(volume.array, volume.affine)
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = encoder(x.to(self.device))
        grid = encoder.patch_grid(out, tuple(x.shape[2:]), input_affine)
        timings["embeddings"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        emb = out.tokens.float()
        pos = torch.from_numpy(grid.positions())[None].to(self.device)
        texts, info = head.generate(emb, pos)
        timings["head_and_report"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = np.zeros(volume.shape, dtype=np.uint8)
        result = self._result(volume, labels, grid, texts[0], info, timings)
        timings["attention_maps"] = time.perf_counter() - t0
        result.extra["segmentation"] = f"none (encoder {self.encoder_name} does not segment)"
        result.extra["model"]["encoder"] = self.release.encoder
        logger.info(
            "deep analyzer (%s): %d tokens, timings %s",
            self.encoder_name,
            len(grid),
            {k: round(v, 2) for k, v in timings.items()},
        )
        return result

    def attention_geometry(self, volume: Volume) -> tuple[tuple[int, int, int], np.ndarray]:
        """Shape and affine of the attention maps' grid: the source grid subsampled to ~attention_voxel_mm."""
        factors = [max(1, int(round(self.attention_voxel_mm / s))) for s in volume.spacing]
        shape = tuple(int(np.ceil(n / f)) for n, f in zip(volume.shape, factors))
        affine = volume.affine.copy()
        affine[:3, :3] = volume.affine[:3, :3] * np.asarray(factors, dtype=np.float64)
        affine[:3, 3] = volume.affine[:3, :3] @ ((np.asarray(factors) - 1) / 2.0) + volume.affine[:3, 3]
        return shape, affine  # type: ignore[return-value]

    def mapped_findings(self, probs: np.ndarray) -> set[str]:
        """Which findings get a stored attention map: "Abnormal" and the most probable present ones.

        Each map stored in the PACS is about the size of the CT (OHIF overlays only maps on the CT
        grid), so not all 19 are written; every finding's patch attention stays in ``extra``.
        """
        present = sorted(
            (s for s in self.catalogue.findings if s.name != "Abnormal" and probs[s.index] >= 0.5),
            key=lambda s: -float(probs[s.index]),
        )
        return {"Abnormal"} | {s.name for s in present[: self.max_finding_maps]}

    def _result(self, volume: Volume, labels: np.ndarray, grid, text: str, info: dict, timings: dict) -> StudyResult:
        shape, affine = self.attention_geometry(volume)
        probs = info["probabilities"][0].float().cpu().numpy()
        cls_att = info["cls_attention"][0].float().cpu().numpy()  # [19, P]
        maps, findings = [], []
        mapped = self.mapped_findings(probs)
        for spec in self.catalogue.findings:
            index = None
            if spec.name in mapped:
                maps.append(_relative_map(spec.name, cls_att[spec.index], grid, shape, affine))
                index = len(maps) - 1
            findings.append(
                Finding(
                    name=spec.name,
                    probability=float(np.clip(probs[spec.index], 0.0, 1.0)),
                    code=spec.code,
                    site=spec.site,
                    segment_labels=spec.segment_labels,
                    attention_index=index,
                )
            )
        token_att = info["token_attention"][0].numpy()  # [T, P]
        report_w = token_att.mean(axis=0) if len(token_att) else np.full(len(grid), 1.0 / len(grid))
        maps.append(_relative_map("Report", report_w, grid, shape, affine))
        present = [s.label for s in self.scheme.segments]
        labels = labels.astype(np.uint8)
        extra = {
            "model": {"name": self.release.name, "version": self.release.version, "untrained": self.release.untrained},
            "prompt": info["prompts"][0],
            "finding_patch_attention": {s.name: cls_att[s.index].tolist() for s in self.catalogue.findings},
            "segments_present": sorted(int(v) for v in np.unique(labels) if v in present),
            "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
        }
        report_attention = ReportAttention(
            tokens=tuple(info["tokens"][0]),
            patch_attention=token_att.reshape(len(info["tokens"][0]), len(grid)),
            patch_grid=grid.to_dict(),
            grid_shape=shape,
            grid_affine=affine,
        )
        if not text.strip():  # an SR text item must not be empty
            text = "(the model generated no report text)"
        return StudyResult(
            analyzer=self.info,
            labels=labels,
            segments=self.scheme.segments,
            findings=tuple(findings),
            report_text=text,
            attention=tuple(maps),
            extra=extra,
            report_attention=report_attention,
        )

    def token_attention_map(self, result: StudyResult, index: int) -> AttentionMap:
        """The attention map of report token ``index`` of ``result``, on the attention grid.

        Raises
        ------
        ValueError
            When the result carries no report attention.
        IndexError
            When ``index`` is outside the report's tokens.
        """
        if result.report_attention is None:
            raise ValueError("the result carries no report attention")
        return report_token_map(result.report_attention, index)
