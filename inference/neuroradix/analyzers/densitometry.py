"""Lung densitometry of the parenchyma (lung minus airway tree), by lung and by cranio-caudal zone.

Measures, for each lung, both lungs, and the upper / middle / lower zone of each lung (equal-volume
thirds of that lung's parenchyma along the patient's z axis, as used for regional densitometry, where
upper- versus lower-zone predominance is read):

* volume (mL);
* LAA-950 % and LAA-910 %: percent of parenchyma voxels below -950 / -910 HU (Gevenois et al.,
  AJRCCM 1996;154:187-192 validated -950 HU against histology at 1 mm slices);
* Perc15: the 15th percentile of the HU histogram (Dirksen et al., AJRCCM 1999;160:1582-1588;
  Parr et al. 2006; the density measure QIBA's lung-density profile favours for follow-up);
* mean lung density (HU).

Whole-lung only: the number of low-attenuation clusters (6-connected components below -950 HU)
and the exponent D of their cumulative size distribution, ``N(size >= s) ~ s^-D`` (Mishima et al.,
PNAS 1999;96:8829-8834: D falls as small clusters merge into large ones in emphysema).

The low-attenuation map (:func:`laa_map`, settings :class:`LaaMapConfig`): local LAA-950 in a round
(Gaussian, 10 mm FWHM) neighbourhood of parenchyma, 0 below a display floor of 6 % (the report's
emphysema cut-off), shown up to 30 %; wider on sharp-kernel or thick scans and none above 5 mm
(:func:`plan_laa_map`). References in the class docstring and ``docs/lung-analyzer.md``.

Codes come from ``data/lung-hu-codes.json`` (validated on load).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional

import numpy as np
from scipy import ndimage

from neuroradix.analyzers.arrays import block_sum, blocks
from neuroradix.errors import ConfigError
from neuroradix.types import AttentionMap, Code, Measurement, Volume

logger = logging.getLogger(__name__)

ZONES = ("upper", "middle", "lower")
SIDES = ("right", "left")
UNIT_ML = Code("mL", "UCUM", "milliliter")
UNIT_PERCENT = Code("%", "UCUM", "percent")
UNIT_HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
UNIT_ONE = Code("1", "UCUM", "no units")
MIN_CLUSTERS_FOR_D = 20
#: LAA-950 above which the report mentions emphysema. Gevenois et al., AJRCCM 1996;154:187-192
#: validated -950 HU against pathology; 6 % is a cut-off commonly used for "emphysema present" in
#: COPD cohorts (e.g. COPDGene), with thin-slice, soft-kernel CT.
LAA_REPORT_CUTOFF_PERCENT = 6.0


@dataclass(frozen=True)
class LungCodes:
    """Concepts and sites of the measurements (from the data file)."""

    concepts: dict[str, Code]
    sites: dict[str, Code]


@lru_cache(maxsize=1)
def lung_codes() -> LungCodes:
    """Load and validate ``data/lung-hu-codes.json``."""
    ref = resources.files("neuroradix") / "data" / "lung-hu-codes.json"
    try:
        data = json.loads(ref.read_text(encoding="utf-8"))
        concepts = {k: Code.from_dict(v) for k, v in data["concepts"].items()}
        sites = {k: Code.from_dict(v) for k, v in data["sites"].items()}
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"data/lung-hu-codes.json is not valid: {exc}") from exc
    needed = {
        "volume",
        "attenuation",
        "mean",
        "laa950",
        "laa910",
        "perc15",
        "cluster_count",
        "cluster_d",
        "branch_count",
        "generations",
        "laa950_fraction",
    }
    missing = needed - set(concepts) | {f"{s}_{z}" for s in SIDES for z in ZONES} - set(sites)
    if missing:
        raise ConfigError(f"data/lung-hu-codes.json lacks {sorted(missing)}")
    return LungCodes(concepts, sites)


@dataclass(frozen=True)
class DensityStats:
    """Densitometry of one region of parenchyma."""

    voxels: int
    volume_ml: float
    laa950_percent: float
    laa910_percent: float
    perc15_hu: float
    mean_hu: float


def density_stats(values: np.ndarray, voxel_ml: float) -> DensityStats:
    """Densitometry of the HU ``values`` of one region (any shape, flattened)."""
    values = np.asarray(values, dtype=np.float32).ravel()
    n = int(values.size)
    if n == 0:
        return DensityStats(0, 0.0, 0.0, 0.0, float("nan"), float("nan"))
    k = int(np.floor(0.15 * (n - 1)))
    perc15 = float(np.partition(values, k)[k])
    return DensityStats(
        n,
        n * voxel_ml,
        100.0 * np.count_nonzero(values < -950.0) / n,
        100.0 * np.count_nonzero(values < -910.0) / n,
        perc15,
        float(values.mean(dtype=np.float64)),
    )


def zone_index(z_mm: np.ndarray) -> np.ndarray:
    """0 (lower), 1 (middle), 2 (upper): equal-count thirds of the positions ``z_mm`` (inferior first)."""
    order = np.argsort(z_mm, kind="stable")
    zone = np.empty(z_mm.size, dtype=np.int8)
    n = z_mm.size
    zone[order[: n // 3]] = 0
    zone[order[n // 3 : 2 * n // 3]] = 1
    zone[order[2 * n // 3 :]] = 2
    return zone


@dataclass(frozen=True)
class Densitometry:
    """Stats by region: keys ``("right"|"left"|"both", None|"upper"|"middle"|"lower")``."""

    regions: dict[tuple[str, Optional[str]], DensityStats]
    cluster_count: int
    cluster_d: Optional[float]


def measure_parenchyma(
    hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, label_of: dict[str, int], voxel_ml: float
) -> Densitometry:
    """Densitometry of the lungs in ``labels`` (already without airways) on the grid of ``hu``.

    Parameters
    ----------
    hu, labels:
        HU and labels on the same grid (a crop is fine, with ``affine`` of that crop).
    affine:
        Index-to-LPS matrix of the grid (its row 2 gives patient z).
    label_of:
        ``{"right": 3, "left": 2}``.
    voxel_ml:
        Voxel volume.
    """
    regions: dict[tuple[str, Optional[str]], DensityStats] = {}
    every = []
    for side in SIDES:
        coords = np.nonzero(labels == label_of[side])
        values = hu[coords]
        every.append(values)
        regions[(side, None)] = density_stats(values, voxel_ml)
        z = (affine[2, 0] * coords[0] + affine[2, 1] * coords[1] + affine[2, 2] * coords[2]).astype(np.float32)
        zone = zone_index(z)
        for code, name in enumerate(("lower", "middle", "upper")):
            regions[(side, name)] = density_stats(values[zone == code], voxel_ml)
    regions[("both", None)] = density_stats(np.concatenate(every), voxel_ml)
    parenchyma = (labels == label_of["right"]) | (labels == label_of["left"])
    clusters, count = ndimage.label(parenchyma & (hu < -950.0))
    sizes = np.bincount(clusters.ravel())[1:] if count else np.zeros(0, dtype=np.int64)
    return Densitometry(regions, int(count), cluster_exponent(sizes))


def cluster_exponent(sizes: np.ndarray) -> Optional[float]:
    """D of ``N(size >= s) ~ s^-D`` fitted on log-log axes (Mishima et al. 1999); ``None`` if too few clusters."""
    if sizes.size < MIN_CLUSTERS_FOR_D:
        return None
    unique = np.unique(sizes)
    cumulative = np.array([np.count_nonzero(sizes >= s) for s in unique], dtype=np.float64)
    keep = cumulative >= 3  # the tail of a few huge clusters carries no slope information
    if keep.sum() < 3:
        return None
    slope = np.polyfit(np.log10(unique[keep].astype(np.float64)), np.log10(cumulative[keep]), 1)[0]
    return float(-slope)


def density_measurements(d: Densitometry, codes: LungCodes, segment_of: dict[str, int]) -> tuple[Measurement, ...]:
    """The measurements (name, value, unit, concept, finding site) for the SR and ``results.json``."""
    c, s = codes.concepts, codes.sites
    out: list[Measurement] = []
    for side in SIDES + ("both",):
        for zone in (None,) + ZONES:
            if side == "both" and zone is not None:
                continue
            stats = d.regions[(side, zone)]
            if side == "both":
                prefix, site, label = "Total", s["lung"], None
            elif zone is None:
                prefix, site, label = f"{side.capitalize()} lung", s[f"{side}_lung"], segment_of[side]
            else:
                prefix, site, label = f"{side.capitalize()} lung {zone} zone", s[f"{side}_{zone}"], None
            volume_name = "Total lung volume" if side == "both" else f"{prefix} volume"
            mld_name = "Mean lung density" if side == "both" else f"{prefix} mean lung density"
            out += [
                Measurement(volume_name, round(stats.volume_ml, 1), UNIT_ML, c["volume"], site, label),
                Measurement(
                    f"{prefix} LAA-950", round(stats.laa950_percent, 2), UNIT_PERCENT, c["laa950"], site, label
                ),
                Measurement(
                    f"{prefix} LAA-910", round(stats.laa910_percent, 2), UNIT_PERCENT, c["laa910"], site, label
                ),
                Measurement(f"{prefix} Perc15", round(stats.perc15_hu, 1), UNIT_HU, c["perc15"], site, label),
                Measurement(
                    mld_name, round(stats.mean_hu, 1), UNIT_HU, c["attenuation"], site, label, derivation=c["mean"]
                ),
            ]
    out.append(Measurement("LAA-950 cluster count", float(d.cluster_count), UNIT_ONE, c["cluster_count"], s["lung"]))
    if d.cluster_d is not None:
        out.append(
            Measurement("LAA-950 cluster size exponent D", round(d.cluster_d, 3), UNIT_ONE, c["cluster_d"], s["lung"])
        )
    return tuple(out)


@dataclass(frozen=True)
class LaaMapConfig:
    """How the local LAA-950 map is made and shown (mm, fractions); see ``docs/lung-analyzer.md``.

    Parameters
    ----------
    fwhm_mm:
        Full width at half maximum of the round (Gaussian) neighbourhood: 10 mm, about one
        secondary pulmonary lobule (10-25 mm across; Webb, Radiology 2006;239:322-338), the unit
        in which centrilobular emphysema is seen.
    floor:
        Local LAA-950 below which the map stores 0 (not shown): the whole-lung LAA-950 at which the
        report says emphysema (:data:`LAA_REPORT_CUTOFF_PERCENT`, 6 %). Normal lungs reach about
        5-6 % LAA-950 on thin-section soft-kernel CT (Gevenois et al. 1996; COPDGene), so a
        neighbourhood below that is within normal and is not coloured.
    display_top:
        Local LAA-950 at the top of the colour scale (30 %: in the Fleischner Society's grading,
        Lynch et al., Radiology 2015;277:192-205, lucencies that fill a large part of a region
        are confluent or advanced destructive emphysema).
    degraded_fwhm_factor:
        The neighbourhood is this much wider on a scan with a sharp kernel. On slices thicker than
        the quality limit its sigma is at least the slice thickness (three slices within +-1 sigma).
    sharp_presmooth_sigma_mm:
        On a sharp-kernel scan, the HU are smoothed with a Gaussian of this sigma before the
        threshold, an approximation of a soft kernel (noise filtering before emphysema scoring:
        Schilham et al., IEEE TMI 2006;25:451-463; kernel effect: Boedeker et al., Radiology
        2004;232:295-301).
    max_slice_mm:
        Thicker slices get no map: a lobule-sized neighbourhood holds only one or two of them and
        partial volume averages lucencies of a few mm away.
    """

    fwhm_mm: float = 10.0
    floor: float = LAA_REPORT_CUTOFF_PERCENT / 100.0
    display_top: float = 0.30
    degraded_fwhm_factor: float = 1.5
    sharp_presmooth_sigma_mm: float = 1.0
    max_slice_mm: float = 5.0

    def __post_init__(self) -> None:
        if self.fwhm_mm <= 0 or self.max_slice_mm <= 0:
            raise ValueError("fwhm_mm and max_slice_mm must be positive")
        if not 0.0 <= self.floor < self.display_top <= 1.0:
            raise ValueError("floor and display_top must satisfy 0 <= floor < display_top <= 1")
        if self.degraded_fwhm_factor < 1.0 or self.sharp_presmooth_sigma_mm < 0:
            raise ValueError("degraded_fwhm_factor must be >= 1 and sharp_presmooth_sigma_mm >= 0")


@dataclass(frozen=True)
class LaaMapPlan:
    """How the map of one scan is made, from its quality: kernel sigmas, a note, or why there is none."""

    sigma_mm: float
    presmooth_sigma_mm: float = 0.0
    note: str = ""  # a few words for the series description, e.g. "smoothed: sharp kernel"
    skip_reason: str = ""  # non-empty: no map, and this sentence says why

    def to_dict(self) -> dict:
        """JSON-able, for ``StudyResult.extra``."""
        return {
            "sigma_mm": round(self.sigma_mm, 2),
            "presmooth_sigma_mm": self.presmooth_sigma_mm,
            "note": self.note,
            "skip_reason": self.skip_reason,
        }


FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def plan_laa_map(config: LaaMapConfig, slice_mm: float, sharp_kernel: bool, thin_slice_mm: float) -> LaaMapPlan:
    """The map's smoothing for a scan with slices of ``slice_mm`` and a sharp kernel or not.

    Parameters
    ----------
    config:
        The map settings.
    slice_mm:
        Slice thickness (the larger of the header's thickness and the slice spacing).
    sharp_kernel:
        The reconstruction kernel is a known sharp one (:func:`~.scan_quality.kernel_sharpness`).
    thin_slice_mm:
        Above this the quality checks flag the slices as thick
        (:attr:`~.scan_quality.QualityConfig.max_slice_thickness_mm`).
    """
    if slice_mm > config.max_slice_mm + 1e-3:
        return LaaMapPlan(
            0.0,
            skip_reason=f"No low-attenuation map: slices {slice_mm:.1f} mm thick (above {config.max_slice_mm:.0f} mm)",
        )
    sigma = config.fwhm_mm / FWHM_PER_SIGMA
    if sharp_kernel:
        sigma *= config.degraded_fwhm_factor
    # Thick slices: at least three slices within +-1 sigma. Up to about 4 mm the default
    # neighbourhood already holds them, so the map stays the default one there.
    thick = slice_mm > thin_slice_mm + 1e-3 and slice_mm > sigma
    if thick:
        sigma = slice_mm
    what = [w for w, flag in (("sharp", sharp_kernel), ("thick", thick)) if flag]
    note = ""
    if len(what) == 2:
        note = "smoothed: sharp, thick"
    elif what == ["sharp"]:
        note = "smoothed: sharp kernel"
    elif what == ["thick"]:
        note = "smoothed: thick slices"
    return LaaMapPlan(float(sigma), config.sharp_presmooth_sigma_mm if sharp_kernel else 0.0, note)


def laa_map(
    volume: Volume,
    labels: np.ndarray,
    lung_box: tuple[slice, ...],
    threshold_hu: float,
    plan: LaaMapPlan,
    config: LaaMapConfig,
    quantity: Code,
) -> tuple[AttentionMap, float]:
    """Local LAA-950: the fraction of parenchyma (labels 2 and 3) below ``threshold_hu`` in a round neighbourhood.

    A normalised Gaussian convolution (``G * low / G * lung``, sigma ``plan.sigma_mm``, the same in
    mm along every axis) counts only parenchyma, so the lung border is not diluted by the chest
    wall. Values below ``config.floor`` are stored as 0. A single low voxel colours nothing: a
    10 mm FWHM neighbourhood holds about 3400 mm3 of lung, so one voxel of at most a few mm3
    gives well below 1 %.

    The grid takes every 2nd voxel in plane (and every 2nd slice below 1.25 mm); each of its
    voxels sits at the centre of the block it summarises, as its affine says.

    Returns
    -------
    amap, coloured_fraction
        The map (``display_range`` = floor to top, ``note`` from the plan) and the fraction of
        the parenchyma voxels that lie in its non-zero blocks.
    """
    spacing = volume.spacing
    factors = (2 if spacing[0] < 1.25 else 1, 2, 2)
    out_shape = blocks(volume.shape, factors)
    box = tuple(slice(b.start - b.start % f, b.stop) for b, f in zip(lung_box, factors))
    sub = labels[box]
    lung = (sub == 2) | (sub == 3)
    hu = volume.array[box]
    if plan.presmooth_sigma_mm > 0:
        hu = ndimage.gaussian_filter(hu.astype(np.float32), sigma=[plan.presmooth_sigma_mm / s for s in spacing])
    low = block_sum(lung & (hu < threshold_hu), factors)
    del hu
    lung_count = block_sum(lung, factors)
    sigma = [plan.sigma_mm / (s * f) for s, f in zip(spacing, factors)]
    low_local = ndimage.gaussian_filter(low, sigma=sigma, mode="constant", truncate=3.0)
    lung_local = ndimage.gaussian_filter(lung_count, sigma=sigma, mode="constant", truncate=3.0)
    ratio = np.where(lung_count > 0, low_local / np.maximum(lung_local, 1e-6), 0.0).astype(np.float32)
    np.clip(ratio, 0.0, 1.0, out=ratio)
    ratio[ratio < config.floor] = 0.0
    total = float(lung_count.sum())
    coloured = float(lung_count[ratio > 0].sum()) / total if total else 0.0
    array = np.zeros(out_shape, dtype=np.float32)
    start = [b.start // f for b, f in zip(box, factors)]
    array[
        start[0] : start[0] + ratio.shape[0], start[1] : start[1] + ratio.shape[1], start[2] : start[2] + ratio.shape[2]
    ] = ratio
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] * np.asarray(factors, dtype=np.float64)
    affine[:3, 3] = volume.affine[:3, :3] @ ((np.asarray(factors) - 1) / 2.0) + volume.affine[:3, 3]
    amap = AttentionMap(
        "Local LAA-950",
        array,
        affine,
        quantity,
        UNIT_ONE,
        display_range=(config.floor, config.display_top),
        note=plan.note,
    )
    logger.debug("LAA map: sigma %.1f mm, %.2f %% of the parenchyma coloured", plan.sigma_mm, 100.0 * coloured)
    return amap, coloured


def report_text(density: Densitometry, branch_count: int, generations: int, coverage: dict, warnings: int) -> str:
    """The templated report: volumes, LAA-950 by lung and zone, Perc15, MLD, airway tree, caveats."""
    r, left, both = density.regions[("right", None)], density.regions[("left", None)], density.regions[("both", None)]
    zones: dict[str, float] = {}
    for zone in ("upper", "middle", "lower"):
        parts = [density.regions[(side, zone)] for side in ("right", "left")]
        n = sum(p.voxels for p in parts)
        zones[zone] = sum(p.laa950_percent * p.voxels for p in parts) / n if n else 0.0
    lines = [
        "Lungs segmented automatically from CT density (no trained model); airways removed from the parenchyma.",
        f"Right lung volume {r.volume_ml:.0f} mL, left lung {left.volume_ml:.0f} mL (total {both.volume_ml:.0f} mL).",
        f"Low-attenuation area below -950 HU: {both.laa950_percent:.1f} % (emphysema index; "
        f"right {r.laa950_percent:.1f} %, left {left.laa950_percent:.1f} %).",
        f"By zone (LAA-950): upper {zones['upper']:.1f} %, middle {zones['middle']:.1f} %, lower {zones['lower']:.1f} %.",
        f"Perc15 {both.perc15_hu:.0f} HU; mean lung density {both.mean_hu:.0f} HU.",
        f"Airway tree: {branch_count} branches, generation {max(generations, 0)} reached "
        "(trachea 0, main bronchi 1, lobar 2, segmental 3).",
    ]
    if both.laa950_percent > LAA_REPORT_CUTOFF_PERCENT:
        lines.append(
            f"LAA-950 above {LAA_REPORT_CUTOFF_PERCENT:.0f} %: consistent with emphysema; "
            "correlate with the images and clinical history."
        )
    cut = [name for name, key in (("apices", "cut_superior"), ("bases", "cut_inferior")) if coverage[key]]
    if cut:
        lines.append(f"The lung {' and '.join(cut)} lie outside the scanned range: volumes are partial.")
    if warnings:
        lines.append(f"{warnings} scan-quality warning(s): read the numbers with them.")
    return "\n".join(lines)


__all__ = [
    "laa_map",
    "plan_laa_map",
    "LaaMapConfig",
    "LaaMapPlan",
    "report_text",
    "LAA_REPORT_CUTOFF_PERCENT",
    "DensityStats",
    "Densitometry",
    "LungCodes",
    "density_stats",
    "density_measurements",
    "lung_codes",
    "measure_parenchyma",
    "zone_index",
    "cluster_exponent",
    "ZONES",
    "SIDES",
]
