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


def laa_map(
    volume: Volume,
    labels: np.ndarray,
    lung_box: tuple[slice, ...],
    threshold_hu: float,
    window_mm: float,
    quantity: Code,
) -> AttentionMap:
    """Fraction of parenchyma voxels (labels 2 and 3) below ``threshold_hu`` in a ``window_mm`` box.

    On a grid coarser in plane.

    The grid takes every 2nd voxel in plane (and every 2nd slice below 1.25 mm); each of its
    voxels sits at the centre of the block it summarises, as its affine says.
    """
    spacing = volume.spacing
    factors = (2 if spacing[0] < 1.25 else 1, 2, 2)
    out_shape = blocks(volume.shape, factors)
    box = tuple(slice(b.start - b.start % f, b.stop) for b, f in zip(lung_box, factors))
    sub = labels[box]
    lung = (sub == 2) | (sub == 3)
    low = block_sum(lung & (volume.array[box] < threshold_hu), factors)
    lung = block_sum(lung, factors)
    size = [max(1, int(round(window_mm / (s * f)))) | 1 for s, f in zip(spacing, factors)]
    lung_box_sum = ndimage.uniform_filter(lung, size=size, mode="constant")
    low_box_sum = ndimage.uniform_filter(low, size=size, mode="constant")
    ratio = np.where(lung > 0, low_box_sum / np.maximum(lung_box_sum, 1e-6), 0.0)
    array = np.zeros(out_shape, dtype=np.float32)
    start = [b.start // f for b, f in zip(box, factors)]
    array[
        start[0] : start[0] + ratio.shape[0], start[1] : start[1] + ratio.shape[1], start[2] : start[2] + ratio.shape[2]
    ] = np.clip(ratio, 0.0, 1.0)
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] * np.asarray(factors, dtype=np.float64)
    affine[:3, 3] = volume.affine[:3, :3] @ ((np.asarray(factors) - 1) / 2.0) + volume.affine[:3, 3]
    return AttentionMap("Low attenuation density", array, affine, quantity, UNIT_ONE)


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
