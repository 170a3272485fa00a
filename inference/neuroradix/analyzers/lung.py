"""The no-weights lung analyzer: body, lungs and the airway tree from HU and connectivity; densitometry.

A measurement tool, not a classifier: it returns segments, lung volumes, LAA-950, LAA-910, Perc15
and mean lung density by lung and by zone, the airway branch count, scan-quality warnings, a
templated report text and a low-attenuation density map, and **no findings** (it has no
probabilities to give). ``docs/lung-analyzer.md`` describes the method and its references.

How it works (body and lungs on a working grid of about 2.5 mm, block means of the source voxels,
then mapped back to the full grid; the airway tree on a grid of about 1.25 mm):

1. Input checks: a 3-D, finite, non-constant volume; else :class:`BadInputError`.
2. Block-mean downsampling, then a reorientation to a conventional axial stack with
   :func:`~neuroradix.imaging.ctseries.axial_axes` (slices inferior to superior), so every step below
   works whatever the orientation of the source grid.
3. Body: the largest connected component above -500 HU, holes filled slice by slice.
4. Air inside the body: below -400 HU; components that touch the outside are dropped.
5. Trachea and main bronchi on the coarse grid: a trachea seed in the top 40 mm (the largest round
   region below -900 HU within 25 mm of the body's midline), grown with leak control; they keep the
   large airways out of the lung candidates and give the seed of step 8.
6. Lungs: the air components left once the airways are removed that look like lung (median HU
   between -960 and -600: pure gas is bowel gas), joined to the airways or large. Lungs that
   touch are split by erosion and nearest-core regrowth (fallback: the midline plane). Each lung's
   side comes from the **patient x coordinate** of its centroid (LPS x > 0 is the patient's left),
   never from an array index.
7. Labels back on the full grid; the boundary band of the body and the lungs is re-thresholded
   at full resolution.
8. The airway tree (:mod:`.airway`: explosion-controlled region growing, wavefront leak pruning,
   branch and generation count, then the small-airway extension that takes the lumen of the
   smaller bronchi beyond the tree out of the parenchyma) replaces the coarse airways;
   parenchyma = lung minus tree.
9. Densitometry of the parenchyma by lung and zone (:mod:`.densitometry`) and scan-quality checks
   (:mod:`.scan_quality`), which become ``StudyResult.warnings`` and never change a number.
10. The low-attenuation map (local LAA-950, :func:`~.densitometry.laa_map`): its neighbourhood
    follows the kernel and slice-thickness checks (:func:`~.densitometry.plan_laa_map`); above
    5 mm there is none, and a warning says why.

Design choice: a CT without lungs (e.g. an abdomen CT showing only the lung bases) raises
:class:`BadInputError` with the volume of lung-like air found, because lung volumes and emphysema
indices of a fragment would mislead (``min_lung_ml=0`` in the config measures it anyway). Lungs cut
by the scan range are measured, and the report says that the volumes are partial.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from neuroradix.analyzers.airway import AirwayConfig, AirwayTree, empty_tree, grow_airway_tree
from neuroradix.analyzers.arrays import (
    block_mean,
    fill_holes_per_slice,
    largest_component,
    nearest_seed_split,
    paste,
    upsample,
)
from neuroradix.analyzers.densitometry import (
    LAA_REPORT_CUTOFF_PERCENT,
    UNIT_HU,
    UNIT_ONE,
    LaaMapConfig,
    density_measurements,
    laa_map,
    lung_codes,
    measure_parenchyma,
    plan_laa_map,
    report_text,
)
from neuroradix.analyzers.scan_quality import (
    QualityCheck,
    QualityConfig,
    check_air,
    check_contrast,
    check_kernel,
    check_slice_thickness,
    external_air_hu,
    kernel_sharpness,
    mediastinal_vessel_hu,
    tracheal_air_hu,
)
from neuroradix.errors import BadInputError
from neuroradix.imaging.ctseries import axial_axes, reorient, undo_reorient
from neuroradix.schemes import load_scheme
from neuroradix.types import AnalyzerInfo, AttentionMap, Code, Measurement, StudyResult, Volume

logger = logging.getLogger(__name__)

# Concepts, sites and units come from data/lung-hu-codes.json (see neuroradix.analyzers.densitometry).


@dataclass(frozen=True)
class LungAnalyzerConfig:
    """Thresholds and sizes of :class:`LungAnalyzer` (HU, mm, mL)."""

    target_spacing_mm: float = 2.5
    body_threshold_hu: float = -500.0
    air_threshold_hu: float = -400.0
    laa_threshold_hu: float = -950.0
    airway_thresholds_hu: tuple[float, ...] = (-970.0, -960.0, -950.0, -940.0, -930.0, -920.0, -910.0, -900.0)
    max_airway_ml: float = 250.0
    trachea_search_mm: float = 40.0
    min_lung_ml: float = 250.0
    lung_median_hu: tuple[float, float] = (-960.0, -600.0)
    laa_map: LaaMapConfig = field(default_factory=LaaMapConfig)
    airway: AirwayConfig = field(default_factory=AirwayConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

    def __post_init__(self) -> None:
        if self.target_spacing_mm <= 0:
            raise ValueError("target_spacing_mm must be positive")
        if not self.body_threshold_hu < 0 or not self.laa_threshold_hu < self.air_threshold_hu:
            raise ValueError("thresholds must satisfy laa < air and body < 0")
        if self.min_lung_ml < 0 or self.max_airway_ml <= 0:
            raise ValueError("min_lung_ml must be >= 0 and max_airway_ml > 0")


@dataclass
class _Grid:
    """The working grid: canonical axial orientation, coarse."""

    hu: np.ndarray
    affine: np.ndarray
    factors: tuple[int, int, int]
    order: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    notes: dict = field(default_factory=dict)
    seed: Optional[tuple[int, int, int]] = None  # trachea seed on this grid

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def point(self, index: ArrayLike) -> np.ndarray:
        """LPS position (mm) of a (fractional) voxel index."""
        return self.affine[:3, :3] @ np.asarray(index, dtype=np.float64) + self.affine[:3, 3]

    def x_of(self, mask: np.ndarray) -> float:
        """Patient x (LPS, mm) of the centroid of ``mask``."""
        return float(self.point(ndimage.center_of_mass(mask))[0])


class LungAnalyzer:
    """Segment body, lungs and airways from HU, and measure the lungs.

    Parameters
    ----------
    config:
        Thresholds and sizes; the defaults suit adult chest CT.
    """

    info = AnalyzerInfo(
        name="lung-hu",
        version="1.0",
        title="Lung HU analyzer",
        algorithm_family=Code("123109", "DCM", "Manual Processing"),
    )

    def __init__(self, config: Optional[LungAnalyzerConfig] = None) -> None:
        if config is not None and not isinstance(config, LungAnalyzerConfig):
            raise TypeError("config must be a LungAnalyzerConfig")
        self.config = config or LungAnalyzerConfig()
        self.scheme = load_scheme("lung-hu-4")
        self.codes = lung_codes()

    # -- public ------------------------------------------------------------------------------

    def analyze(self, volume: Volume) -> StudyResult:
        """Segment and measure ``volume`` (HU, LPS); see the module docstring."""
        started = time.perf_counter()
        _check_input(volume)
        grid = self._working_grid(volume)
        body = self._body(grid)
        inner_air = self._inner_air(grid, body)
        airway = self._airways(grid, body)
        left, right = self._lungs(grid, body, inner_air, airway)
        coarse = np.zeros(grid.hu.shape, dtype=np.uint8)
        coarse[body] = 1
        coarse[left] = 2
        coarse[right] = 3
        coarse[airway] = 4
        lungs = left | right
        pixel_mm2 = float(grid.spacing[1] * grid.spacing[2])
        coverage = {
            "cut_superior": bool(lungs[-1].sum() * pixel_mm2 > 100.0),
            "cut_inferior": bool(lungs[0].sum() * pixel_mm2 > 100.0),
        }
        labels, lung_box = self._to_full_grid(volume, grid, coarse)
        del coarse
        tree, tree_full, trachea_air = self._airway_tree(volume, grid, body, lungs | airway)
        labels[labels == 4] = 1
        labels[tree_full & (labels > 0)] = 4
        del tree_full
        checks = self._quality(volume, grid, body, lungs, trachea_air)
        result = self._result(volume, grid, labels, lung_box, coverage, tree, checks)
        logger.info(
            "lung analysis of a %s volume took %.2f s", "x".join(map(str, volume.shape)), time.perf_counter() - started
        )
        return result

    # -- steps -------------------------------------------------------------------------------

    def _working_grid(self, volume: Volume, factors: Optional[tuple[int, int, int]] = None) -> _Grid:
        if factors is None:
            f0, f1, f2 = (max(1, int(round(self.config.target_spacing_mm / s))) for s in volume.spacing)
            factors = (f0, f1, f2)
        hu = block_mean(volume.array, factors)
        affine = volume.affine.copy()
        affine[:3, :3] = volume.affine[:3, :3] * np.asarray(factors, dtype=np.float64)
        affine[:3, 3] = volume.affine[:3, :3] @ ((np.asarray(factors) - 1) / 2.0) + volume.affine[:3, 3]
        order, flips = axial_axes(affine)
        hu, affine = reorient(hu, affine, order, flips)
        return _Grid(
            np.ascontiguousarray(hu),
            affine,
            factors,
            order,
            flips,
            notes={"working_factors": list(factors)},
        )

    def _body(self, grid: _Grid) -> np.ndarray:
        body = largest_component(grid.hu > self.config.body_threshold_hu)
        if not body.any():
            raise BadInputError("no body found: no voxel is above -500 HU")
        return fill_holes_per_slice(body)

    def _inner_air(self, grid: _Grid, body: np.ndarray) -> np.ndarray:
        """Air inside the body that is not connected to the air outside."""
        air = grid.hu < self.config.air_threshold_hu
        labels, count = ndimage.label(air)
        outside = np.unique(labels[air & ~body])
        keep = np.ones(count + 1, dtype=bool)
        keep[0] = False
        keep[outside] = False
        return keep[labels]

    def _airways(self, grid: _Grid, body: np.ndarray) -> np.ndarray:
        """Trachea and main bronchi: seeded near the top, grown with leak control."""
        # Light smoothing against noise where the working grid is the full grid (block means
        # already average); more would close thin bronchi.
        smooth = ndimage.gaussian_filter(grid.hu, sigma=0.5) if grid.factors == (1, 1, 1) else grid.hu
        seed = self._trachea_seed(grid, smooth, body)
        grid.seed = seed
        empty = np.zeros(grid.hu.shape, dtype=bool)
        if seed is None:
            logger.info("no trachea found in the top %.0f mm: no airways", self.config.trachea_search_mm)
            grid.notes["airway_threshold_hu"] = None
            return empty
        best, best_ml, used = empty, 0.0, None
        for threshold in self.config.airway_thresholds_hu:
            if smooth[seed] >= threshold:
                continue
            labels, _ = ndimage.label((smooth < threshold) & body)
            grown = labels == labels[seed]
            ml = float(grown.sum()) * grid.voxel_ml
            if ml > self.config.max_airway_ml or (used is not None and ml > 1.5 * best_ml + 20.0):
                logger.debug("airway growth stops at %.0f HU (%.0f mL: leak)", threshold, ml)
                break
            best, best_ml, used = grown, ml, threshold
        if used is not None:  # take back the lumen's border voxels that smoothing pushed over
            best = best | (ndimage.binary_dilation(best) & (grid.hu < -700.0) & body)
            best_ml = float(best.sum()) * grid.voxel_ml
        grid.notes["airway_threshold_hu"] = used
        grid.notes["airway_ml_working_grid"] = round(best_ml, 1)
        return best

    def _trachea_seed(self, grid: _Grid, smooth: np.ndarray, body: np.ndarray) -> Optional[tuple[int, int, int]]:
        """The darkest pixel of the largest round air region near the midline in the top slices."""
        sp = grid.spacing
        pixel_mm2 = float(sp[1] * sp[2])
        top = grid.hu.shape[0] - 1
        depth = max(1, int(round(self.config.trachea_search_mm / sp[0])))
        best, best_area = None, 0.0
        for s in range(top, max(-1, top - depth), -1):
            if not body[s].any():
                continue
            body_x = float(grid.point([s, *ndimage.center_of_mass(body[s])])[0])
            labels, _ = ndimage.label((smooth[s] < -900.0) & body[s])
            for index, where in enumerate(ndimage.find_objects(labels), start=1):
                comp = labels[where] == index
                area = float(comp.sum()) * pixel_mm2
                if not 30.0 <= area <= 1000.0 or area <= best_area or comp.sum() / comp.size < 0.45:
                    continue
                rows, cols = np.nonzero(comp)
                centre = np.array([s, rows.mean() + where[0].start, cols.mean() + where[1].start])
                if abs(float(grid.point(centre)[0]) - body_x) > 25.0:  # apices and bullae lie lateral
                    continue
                flat = np.argmin(np.where(comp, smooth[s][where], np.inf))
                r, c = np.unravel_index(flat, comp.shape)
                best, best_area = (s, int(r) + where[0].start, int(c) + where[1].start), area
        if best is not None:
            grid.notes["trachea_seed_z_mm"] = round(float(grid.point(best)[2]), 1)
        return best

    def _lungs(
        self, grid: _Grid, body: np.ndarray, inner_air: np.ndarray, airway: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        candidates = inner_air & ~airway
        labels, count = ndimage.label(candidates)
        if count == 0:
            raise BadInputError("no lungs found: there is no air inside the body")
        sizes = np.bincount(labels.ravel(), minlength=count + 1) * grid.voxel_ml
        touching = set(np.unique(labels[ndimage.binary_dilation(airway) & candidates]).tolist()) - {0}
        accepted = []
        for index in np.argsort(sizes[1:])[::-1][:12] + 1:
            if sizes[index] < 5.0:
                break
            median = float(np.median(grid.hu[labels == index]))
            if not cfg.lung_median_hu[0] <= median <= cfg.lung_median_hu[1]:
                logger.debug("air component of %.0f mL, median %.0f HU: not lung", sizes[index], median)
                continue
            accepted.append(int(index))
        largest = max((sizes[i] for i in accepted), default=0.0)
        lungs = [i for i in accepted if i in touching or sizes[i] >= 0.25 * largest]
        total = float(sum(sizes[i] for i in lungs))
        grid.notes["lung_like_air_ml"] = round(total, 1)
        if total < cfg.min_lung_ml:
            raise BadInputError(
                f"no lungs found: only {total:.0f} mL of lung-like air inside the body "
                f"(at least {cfg.min_lung_ml:.0f} mL expected); the scan does not appear to cover the chest"
            )
        midline = grid.x_of(airway) if airway.any() else grid.x_of(body)
        pieces = []
        for index in lungs:
            pieces.extend(self._split_if_bilateral(grid, labels == index, midline))
        left = np.zeros(grid.hu.shape, dtype=bool)
        right = np.zeros(grid.hu.shape, dtype=bool)
        xs = [grid.x_of(p) for p in pieces]
        if len(pieces) == 2 and abs(xs[0] - xs[1]) > 40.0:
            order = np.argsort(xs)  # patient x: the larger x is the patient's left
            right |= pieces[order[0]]
            left |= pieces[order[1]]
        else:
            for piece, x in zip(pieces, xs):
                (left if x > midline else right)[...] |= piece
        left = fill_holes_per_slice(left) & body & ~airway
        right = fill_holes_per_slice(right) & body & ~airway & ~left
        grid.notes["midline_x_mm"] = round(midline, 1)
        return left, right

    def _split_if_bilateral(self, grid: _Grid, mask: np.ndarray, midline: float) -> list[np.ndarray]:
        """Split a component holding both lungs (erosion until two cores part, then regrowth)."""
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        sub = mask[box]
        offset = np.array([b.start for b in box], dtype=np.float64)
        xs = [float(grid.point(offset + [0, 0, c])[0]) for c in (0, sub.shape[2] - 1)]
        if not (min(xs) < midline - 30.0 and max(xs) > midline + 30.0):
            return [mask]

        def x_of(part: np.ndarray) -> float:
            return float(grid.point(offset + ndimage.center_of_mass(part))[0])

        total = sub.sum()
        eroded = sub
        for step in range(1, 12):
            eroded = ndimage.binary_erosion(eroded)
            labels, count = ndimage.label(eroded)
            if count == 0:
                break
            if count < 2:
                continue
            sizes = np.bincount(labels.ravel())[1:]
            big = np.argsort(sizes)[::-1][:2] + 1
            if sizes[big[1] - 1] < 0.1 * total:
                continue
            x0, x1 = x_of(labels == big[0]), x_of(labels == big[1])
            if (x0 - midline) * (x1 - midline) < 0:
                grid.notes["lungs_split_by_erosion_steps"] = step
                parts = nearest_seed_split(sub, labels, big, grid.spacing)
                return [paste(mask.shape, box, part) for part in parts]
        logger.info("touching lungs could not be split by erosion: split at the midline")
        grid.notes["lungs_split_at_midline"] = True
        index = np.indices(sub.shape, dtype=np.float32).reshape(3, -1).T + offset
        leftside = (index @ grid.affine[0, :3] + grid.affine[0, 3]).reshape(sub.shape) > midline
        return [paste(mask.shape, box, sub & leftside), paste(mask.shape, box, sub & ~leftside)]

    def _to_full_grid(
        self, volume: Volume, grid: _Grid, coarse: np.ndarray
    ) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
        """Map coarse labels to the volume's grid, re-thresholding the body and lung borders.

        Returns the labels and a box of the full grid that holds both lungs.
        """
        coarse_src = np.ascontiguousarray(undo_reorient(coarse, grid.order, grid.flips))
        found = ndimage.find_objects(((coarse_src == 2) | (coarse_src == 3)).astype(np.uint8))[0]
        lung_box = tuple(
            slice(max(0, (b.start - 1) * f), min(n, (b.stop + 1) * f))
            for b, f, n in zip(found, grid.factors, volume.shape)
        )
        if grid.factors == (1, 1, 1):
            return coarse_src, lung_box  # type: ignore[return-value]
        cfg = self.config
        band = np.zeros(coarse_src.shape, dtype=np.uint8)
        body = coarse_src > 0
        band[ndimage.binary_dilation(body) & ~ndimage.binary_erosion(body)] = 1
        for label in (2, 3):
            m = coarse_src == label
            band[ndimage.binary_dilation(m) & ~ndimage.binary_erosion(m) & (coarse_src != 4) & body] = label
        labels = upsample(coarse_src, grid.factors, volume.shape)
        flat_labels = labels.reshape(-1)  # a view: upsample returns a C-contiguous array
        offsets = np.stack([g.ravel() for g in np.meshgrid(*[np.arange(f) for f in grid.factors], indexing="ij")])
        coarse_index = np.stack(np.nonzero(band))
        for start in range(0, coarse_index.shape[1], 65536):  # only the border voxels, in batches
            part = coarse_index[:, start : start + 65536]
            full = part[:, :, None] * np.asarray(grid.factors)[:, None, None] + offsets[:, None, :]
            kind = np.broadcast_to(band[tuple(part)][:, None], full.shape[1:])
            valid = np.all(full < np.asarray(volume.shape)[:, None, None], axis=0)
            full, kind = full[:, valid], kind[valid]
            hu = volume.array[tuple(full)]
            linear = np.ravel_multi_index(tuple(full), volume.shape)
            new = flat_labels[linear]
            edge = (kind == 1) & (new <= 1)  # body border: inside if above the body threshold
            new[edge] = hu[edge] > cfg.body_threshold_hu
            lung = kind >= 2  # lung border: lung if aerated, else body
            new[lung] = np.where(hu[lung] < cfg.air_threshold_hu, kind[lung], 1)
            flat_labels[linear] = new
        return labels, lung_box  # type: ignore[return-value]

    def _airway_tree(
        self, volume: Volume, grid: _Grid, body: np.ndarray, chest: np.ndarray
    ) -> tuple[AirwayTree, np.ndarray, Optional[float]]:
        """The airway tree on a fine grid (about 1.25 mm), grown from the trachea seed inside the chest box.

        Returns the tree (on the cropped fine grid), its mask on the volume's grid and the median
        HU of the tracheal air (``None`` without a trachea).
        """
        cfg = self.config.airway
        full = np.zeros(volume.shape, dtype=bool)
        if grid.seed is None or not chest.any():
            return empty_tree((1, 1, 1)), full, None
        f0, f1, f2 = (max(1, int(round(cfg.target_spacing_mm / s))) for s in volume.spacing)
        factors = (f0, f1, f2)
        fine = self._working_grid(volume, factors)
        # Both grids are canonical with the same axes: fine index -> coarse index is per-axis linear.
        mapping = np.linalg.inv(grid.affine) @ fine.affine
        scale, shift = np.diag(mapping)[:3], mapping[:3, 3]
        found = ndimage.find_objects(ndimage.binary_dilation(chest, iterations=2).astype(np.uint8))[0]
        lo = [max(0, int(np.floor((b.start - 0.5 - t) / d))) for b, t, d in zip(found, shift, scale)]
        hi = [
            min(n, int(np.ceil((b.stop - 0.5 - t) / d)) + 1) for b, t, d, n in zip(found, shift, scale, fine.hu.shape)
        ]
        hi[0] = fine.hu.shape[0]  # up to the top: the trachea runs out of the scan there
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        hu = fine.hu[box]
        coarse_index = [
            np.clip(np.round(np.arange(a, b) * d + t).astype(int), 0, n - 1)
            for a, b, d, t, n in zip(lo, hi, scale, shift, grid.hu.shape)
        ]
        allowed = body[np.ix_(*coarse_index)]
        centre = [int(round((c - t) / d)) - a for c, t, d, a in zip(grid.seed, shift, scale, lo)]
        near = tuple(slice(max(0, c - 3), min(n, c + 4)) for c, n in zip(centre, hu.shape))
        if any(sl.start >= sl.stop for sl in near):
            return empty_tree((1, 1, 1)), full, None
        local_mean = ndimage.uniform_filter(hu[near], size=3, mode="nearest")  # not a noisy border voxel
        local = np.unravel_index(int(np.argmin(local_mean)), local_mean.shape)
        seed = tuple(int(sl.start + i) for sl, i in zip(near, local))
        tree = grow_airway_tree(hu, fine.spacing, seed, allowed, cfg)  # type: ignore[arg-type]
        if not tree.found:
            return tree, full, None
        trachea_air = tracheal_air_hu(hu, tree.branch_ids == 1)
        canonical = np.zeros(fine.hu.shape, dtype=bool)
        canonical[box] = tree.mask
        source = np.ascontiguousarray(undo_reorient(canonical, fine.order, fine.flips))
        full = upsample(source, fine.factors, volume.shape) if fine.factors != (1, 1, 1) else source
        grid.notes.update(
            {
                "airway_threshold_hu": tree.threshold_hu,
                "airway_factors": list(factors),
                "airway_leaks_removed": tree.leaks_removed,
                "airway_extension_ml": tree.extension_ml,
                "airway_branches_per_generation": list(tree.branches_per_generation),
            }
        )
        return tree, full, trachea_air

    def _quality(
        self, volume: Volume, grid: _Grid, body: np.ndarray, lungs: np.ndarray, trachea_air: Optional[float]
    ) -> list[QualityCheck]:
        """Scan-quality checks from the header and the image (see :mod:`.scan_quality`)."""
        cfg = self.config.quality
        acquisition = volume.acquisition
        slice_mm = float(volume.spacing[grid.order[0]])
        vessel = mediastinal_vessel_hu(grid.hu, body, lungs, grid.spacing, cfg.contrast_hu)
        outside = external_air_hu(grid.hu, body)
        checks = [
            check_kernel(acquisition),
            check_slice_thickness(acquisition, slice_mm, cfg),
            check_contrast(acquisition, vessel, cfg),
            check_air("tracheal air", trachea_air, cfg),
            check_air("external air", outside, cfg),
        ]
        grid.notes["quality"] = {c.name: {"value": c.value, "ok": c.ok} for c in checks}
        return checks

    # -- result ------------------------------------------------------------------------------

    def _result(
        self,
        volume: Volume,
        grid: _Grid,
        labels: np.ndarray,
        lung_box: tuple[slice, slice, slice],
        coverage: dict,
        tree: AirwayTree,
        checks: list[QualityCheck],
    ) -> StudyResult:
        cfg = self.config
        counts = np.bincount(labels.reshape(-1), minlength=5)
        if counts[2] == 0 or counts[3] == 0:
            logger.warning("only one lung found (left %d, right %d voxels)", counts[2], counts[3])
        density = measure_parenchyma(
            volume.array[lung_box], labels[lung_box], volume.affine, {"left": 2, "right": 3}, volume.voxel_volume_ml
        )
        segment_of = {"left": 2, "right": 3}
        concepts, sites = self.codes.concepts, self.codes.sites
        measurements = list(density_measurements(density, self.codes, segment_of))
        measurements += [
            Measurement(
                "Airway branch count", float(tree.branch_count), UNIT_ONE, concepts["branch_count"], sites["airway"], 4
            ),
            Measurement(
                "Airway generations reached",
                float(max(tree.generations, 0)),
                UNIT_ONE,
                concepts["generations"],
                sites["airway"],
                4,
            ),
        ]
        quality_sites = {
            "tracheal air": ("Tracheal air", sites["tracheal_lumen"]),
            "external air": ("External air", sites["external_air"]),
            "contrast": ("Mediastinal vessel", sites["mediastinal_vessel"]),
        }
        for check in checks:
            if check.name in quality_sites and check.value is not None and check.value.endswith(" HU"):
                name, site = quality_sites[check.name]
                measurements.append(
                    Measurement(f"{name} attenuation", float(check.value[:-3]), UNIT_HU, concepts["attenuation"], site)
                )
        warnings = tuple(c.warning for c in checks if not c.ok and c.warning)
        # The map follows the quality checks: wider on thick or sharp-kernel scans, none on very thick ones.
        acquisition = volume.acquisition
        slice_mm = max(
            (acquisition.slice_thickness_mm or 0.0) if acquisition else 0.0, float(volume.spacing[grid.order[0]])
        )
        sharp = bool(acquisition and kernel_sharpness(acquisition.convolution_kernel))
        plan = plan_laa_map(cfg.laa_map, slice_mm, sharp, cfg.quality.max_slice_thickness_mm)
        attention: tuple[AttentionMap, ...] = ()
        map_notes = plan.to_dict()
        if plan.skip_reason:
            warnings += (plan.skip_reason,)
        else:
            amap, coloured = laa_map(
                volume, labels, lung_box, cfg.laa_threshold_hu, plan, cfg.laa_map, concepts["laa950_fraction"]
            )
            attention = (amap,)
            map_notes["coloured_percent_of_parenchyma"] = round(100.0 * coloured, 2)
        text = report_text(density, tree.branch_count, tree.generations, coverage, len(warnings))
        extra = dict(grid.notes)
        extra.update(
            {
                "laa_map": map_notes,
                "coverage": coverage,
                "laa_threshold_hu": cfg.laa_threshold_hu,
                "airways_ml": round(float(counts[4]) * volume.voxel_volume_ml, 1),
                "body_ml": round(float(counts[1:].sum()) * volume.voxel_volume_ml, 1),
            }
        )
        return StudyResult(
            self.info, labels, self.scheme.segments, (), tuple(measurements), text, attention, extra, warnings=warnings
        )


def _check_input(volume: Volume) -> None:
    if not isinstance(volume, Volume):
        raise TypeError("volume must be a neuroradix.types.Volume")
    array = volume.array
    if min(array.shape) < 8:
        raise BadInputError(f"volume of shape {array.shape} is too small for lung analysis")
    if not np.issubdtype(array.dtype, np.number):
        raise BadInputError(f"voxel type {array.dtype} is not numeric")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise BadInputError("the volume holds NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    if hi - lo < 200.0:
        raise BadInputError(f"the volume is (nearly) constant ({lo:.0f} to {hi:.0f} HU): not a CT")


__all__ = ["LungAnalyzer", "LungAnalyzerConfig", "LAA_REPORT_CUTOFF_PERCENT"]
