"""The no-weights lung analyzer: body, lungs and airways from HU thresholds and connectivity.

A measurement tool, not a classifier: it returns segments, lung volumes, LAA-950 and mean lung
density, a templated report text and a low-attenuation density map, and **no findings** (it has no
probabilities to give).

How it works (on a working grid of about 2.5 mm, block means of the source voxels, then mapped
back to the full grid):

1. Input checks: a 3-D, finite, non-constant volume; else :class:`BadInputError`.
2. Block-mean downsampling, then a reorientation to a conventional axial stack with
   :func:`~neuroradix.imaging.ctseries.axial_axes` (slices inferior to superior), so every step below
   works whatever the orientation of the source grid.
3. Body: the largest connected component above -500 HU, holes filled slice by slice.
4. Air inside the body: below -400 HU; components that touch the outside are dropped.
5. Airways: a trachea seed is looked for in the top 40 mm (the largest round region below
   -900 HU within 25 mm of the body's midline), then grown in 3-D with thresholds from -970 HU
   upward; growth stops before the threshold at which the volume explodes (a leak into the lung).
6. Lungs: the air components left once the airways are removed that look like lung (median HU
   between -960 and -600: pure gas is bowel gas), joined to the airways or large. Lungs that
   touch are split by erosion and nearest-core regrowth (fallback: the midline plane). Each lung's
   side comes from the **patient x coordinate** of its centroid (LPS x > 0 is the patient's left),
   never from an array index.
7. Labels back on the full grid; the boundary band of the body and the lungs is re-thresholded
   at full resolution.

Design choice: a CT without lungs (e.g. an abdomen CT showing only the lung bases) raises
:class:`BadInputError` with the volume of lung-like air found, because lung volumes and emphysema
indices of a fragment would mislead. Lungs cut by the scan range are measured, and the report
says that the volumes are partial.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from neuroradix.errors import BadInputError
from neuroradix.imaging.ctseries import axial_axes, reorient, undo_reorient
from neuroradix.schemes import load_scheme
from neuroradix.types import AnalyzerInfo, AttentionMap, Code, Measurement, StudyResult, Volume

logger = logging.getLogger(__name__)

# Concepts and units. SCT 118565006 "Volume" is the property code DICOM uses for volumes
# (legacy SRT G-D705); DCM 112031 "Attenuation Coefficient" with derivation SCT 373098007 "Mean"
# is how TID 1419 expresses a mean HU. DICOM and SNOMED have no code for the percentage of lung
# below -950 HU, so it gets a private code (coding scheme designators starting "99" are private,
# PS3.16 section 8.1).
VOLUME = Code("118565006", "SCT", "Volume")
ATTENUATION = Code("112031", "DCM", "Attenuation Coefficient")
MEAN = Code("373098007", "SCT", "Mean")
LAA950 = Code("LAA950", "99NRX", "Percent lung volume below -950 HU")
LAA950_FRACTION = Code("LAA950F", "99NRX", "Fraction of lung voxels below -950 HU")
LUNG = Code("39607008", "SCT", "Lung")
UNIT_ML = Code("mL", "UCUM", "milliliter")
UNIT_PERCENT = Code("%", "UCUM", "percent")
UNIT_HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
UNIT_RATIO = Code("1", "UCUM", "no units")

#: LAA-950 above which the report mentions emphysema. Gevenois et al., Am J Respir Crit Care Med
#: 1996;154:187-192 validated -950 HU against pathology; 6 % is a cut-off commonly used for
#: "emphysema present" in COPD cohorts (e.g. COPDGene), with thin-slice, soft-kernel CT.
LAA_REPORT_CUTOFF_PERCENT = 6.0


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
    attention_window_mm: float = 10.0

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

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def point(self, index: np.ndarray) -> np.ndarray:
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
        coverage = {"cut_superior": bool(lungs[-1].sum() * pixel_mm2 > 100.0),
                    "cut_inferior": bool(lungs[0].sum() * pixel_mm2 > 100.0)}
        labels, lung_box = self._to_full_grid(volume, grid, coarse)
        result = self._result(volume, grid, labels, lung_box, coverage)
        logger.info("lung analysis of a %s volume took %.2f s", "x".join(map(str, volume.shape)),
                    time.perf_counter() - started)
        return result

    # -- steps -------------------------------------------------------------------------------

    def _working_grid(self, volume: Volume) -> _Grid:
        spacing = volume.spacing
        factors = tuple(max(1, int(round(self.config.target_spacing_mm / s))) for s in spacing)
        hu = block_mean(volume.array, factors)
        affine = volume.affine.copy()
        affine[:3, :3] = volume.affine[:3, :3] * np.asarray(factors, dtype=np.float64)
        affine[:3, 3] = volume.affine[:3, :3] @ ((np.asarray(factors) - 1) / 2.0) + volume.affine[:3, 3]
        order, flips = axial_axes(affine)
        hu, affine = reorient(hu, affine, order, flips)
        return _Grid(np.ascontiguousarray(hu), affine, factors, order, flips,  # type: ignore[arg-type]
                     notes={"working_factors": list(factors)})

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

    def _lungs(self, grid: _Grid, body: np.ndarray, inner_air: np.ndarray, airway: np.ndarray
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
                return [_paste(mask.shape, box, part) for part in parts]
        logger.info("touching lungs could not be split by erosion: split at the midline")
        grid.notes["lungs_split_at_midline"] = True
        index = np.indices(sub.shape, dtype=np.float32).reshape(3, -1).T + offset
        leftside = (index @ grid.affine[0, :3] + grid.affine[0, 3]).reshape(sub.shape) > midline
        return [_paste(mask.shape, box, sub & leftside), _paste(mask.shape, box, sub & ~leftside)]

    def _to_full_grid(self, volume: Volume, grid: _Grid, coarse: np.ndarray
                      ) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
        """Map coarse labels to the volume's grid, re-thresholding the body and lung borders.

        Returns the labels and a box of the full grid that holds both lungs.
        """
        coarse_src = np.ascontiguousarray(undo_reorient(coarse, grid.order, grid.flips))
        found = ndimage.find_objects(((coarse_src == 2) | (coarse_src == 3)).astype(np.uint8))[0]
        lung_box = tuple(slice(max(0, (b.start - 1) * f), min(n, (b.stop + 1) * f))
                         for b, f, n in zip(found, grid.factors, volume.shape))
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
            part = coarse_index[:, start:start + 65536]
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

    # -- result ------------------------------------------------------------------------------

    def _result(self, volume: Volume, grid: _Grid, labels: np.ndarray, lung_box: tuple[slice, slice, slice],
                coverage: dict) -> StudyResult:
        cfg = self.config
        counts, sums, low = lung_stats(labels[lung_box], volume.array[lung_box], cfg.laa_threshold_hu)
        counts[1] = np.count_nonzero(labels == 1)
        counts[4] = np.count_nonzero(labels == 4)
        ml = counts * volume.voxel_volume_ml
        lung_count = counts[2] + counts[3]
        if counts[2] == 0 or counts[3] == 0:
            logger.warning("only one lung found (left %d, right %d voxels)", counts[2], counts[3])
        pct = lambda n, d: float(100.0 * n / d) if d else 0.0  # noqa: E731
        laa = {"left": pct(low[2], counts[2]), "right": pct(low[3], counts[3]),
               "total": pct(low[2] + low[3], lung_count)}
        mld = float((sums[2] + sums[3]) / lung_count) if lung_count else 0.0
        left_site = self.scheme.by_label(2).type
        right_site = self.scheme.by_label(3).type
        measurements = (
            Measurement("Right lung volume", round(float(ml[3]), 1), UNIT_ML, VOLUME, right_site, 3),
            Measurement("Left lung volume", round(float(ml[2]), 1), UNIT_ML, VOLUME, left_site, 2),
            Measurement("Total lung volume", round(float(ml[2] + ml[3]), 1), UNIT_ML, VOLUME, LUNG),
            Measurement("Right lung LAA-950", round(laa["right"], 2), UNIT_PERCENT, LAA950, right_site, 3),
            Measurement("Left lung LAA-950", round(laa["left"], 2), UNIT_PERCENT, LAA950, left_site, 2),
            Measurement("Total LAA-950", round(laa["total"], 2), UNIT_PERCENT, LAA950, LUNG),
            Measurement("Mean lung density", round(mld, 1), UNIT_HU, ATTENUATION, LUNG, derivation=MEAN),
        )
        text = _report_text(ml, laa, mld, coverage)
        attention = (self._laa_map(volume, labels, lung_box),)
        extra = dict(grid.notes)
        extra.update({"coverage": coverage, "laa_threshold_hu": cfg.laa_threshold_hu,
                      "airways_ml": round(float(ml[4]), 1), "body_ml": round(float(ml[1:].sum()), 1)})
        return StudyResult(self.info, labels, self.scheme.segments, (), measurements, text, attention, extra)

    def _laa_map(self, volume: Volume, labels: np.ndarray, lung_box: tuple[slice, slice, slice]) -> AttentionMap:
        """Fraction of lung voxels below -950 HU in a ~10 mm box, on a grid coarser in plane.

        The grid takes every 2nd voxel in plane (and every 2nd slice below 1.25 mm); each of its
        voxels sits at the centre of the block it summarises, as its affine says.
        """
        spacing = volume.spacing
        factors = (2 if spacing[0] < 1.25 else 1, 2, 2)
        out_shape = _blocks(volume.shape, factors)
        box = tuple(slice(b.start - b.start % f, b.stop) for b, f in zip(lung_box, factors))
        sub = labels[box]
        lung = (sub == 2) | (sub == 3)
        low = block_sum(lung & (volume.array[box] < self.config.laa_threshold_hu), factors)
        lung = block_sum(lung, factors)
        size = [max(1, int(round(self.config.attention_window_mm / (s * f)))) | 1 for s, f in zip(spacing, factors)]
        lung_box_sum = ndimage.uniform_filter(lung, size=size, mode="constant")
        low_box_sum = ndimage.uniform_filter(low, size=size, mode="constant")
        ratio = np.where(lung > 0, low_box_sum / np.maximum(lung_box_sum, 1e-6), 0.0)
        array = np.zeros(out_shape, dtype=np.float32)
        start = [b.start // f for b, f in zip(box, factors)]
        array[start[0]:start[0] + ratio.shape[0], start[1]:start[1] + ratio.shape[1],
              start[2]:start[2] + ratio.shape[2]] = np.clip(ratio, 0.0, 1.0)
        affine = volume.affine.copy()
        affine[:3, :3] = volume.affine[:3, :3] * np.asarray(factors, dtype=np.float64)
        affine[:3, 3] = volume.affine[:3, :3] @ ((np.asarray(factors) - 1) / 2.0) + volume.affine[:3, 3]
        return AttentionMap("Low attenuation density", array, affine, LAA950_FRACTION, UNIT_RATIO)


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


def _report_text(ml: np.ndarray, laa: dict, mld: float, coverage: dict) -> str:
    lines = [
        "Lungs segmented automatically from CT density (no trained model).",
        f"Right lung volume {ml[3]:.0f} mL, left lung {ml[2]:.0f} mL (total {ml[2] + ml[3]:.0f} mL).",
        f"Low-attenuation area below -950 HU: {laa['total']:.1f} % (emphysema index; "
        f"right {laa['right']:.1f} %, left {laa['left']:.1f} %).",
        f"Mean lung density {mld:.0f} HU.",
    ]
    if laa["total"] > LAA_REPORT_CUTOFF_PERCENT:
        lines.append(f"LAA-950 above {LAA_REPORT_CUTOFF_PERCENT:.0f} %: consistent with emphysema; "
                     "correlate with the images and clinical history.")
    cut = [name for name, key in (("apices", "cut_superior"), ("bases", "cut_inferior")) if coverage[key]]
    if cut:
        lines.append(f"The lung {' and '.join(cut)} lie outside the scanned range: volumes are partial.")
    return "\n".join(lines)


# -- array helpers -------------------------------------------------------------------------------


def _blocks(shape: tuple[int, ...], factors: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(-(-n // f) for n, f in zip(shape, factors))  # type: ignore[return-value]


def _block_reduce(array: np.ndarray, factors: tuple[int, int, int], mean: bool) -> np.ndarray:
    """Block mean or sum (float32) over ``factors``; edges are padded by replication (mean) or zeros.

    Works slab by slab and sums one axis at a time (much faster than a 6-D reshape reduction).
    """
    out_shape = _blocks(array.shape, factors)
    if tuple(factors) == (1, 1, 1):
        return array.astype(np.float32)
    out = np.empty(out_shape, dtype=np.float32)
    f0, f1, f2 = factors
    step = max(1, 16 // f0)
    for o in range(0, out_shape[0], step):
        k = min(step, out_shape[0] - o)
        sub = array[o * f0:(o + k) * f0].astype(np.float32)
        pad = [(0, k * f0 - sub.shape[0]), (0, out_shape[1] * f1 - sub.shape[1]), (0, out_shape[2] * f2 - sub.shape[2])]
        if any(p[1] for p in pad):
            sub = np.pad(sub, pad, mode="edge" if mean else "constant")
        acc = sub.reshape(k, f0, *sub.shape[1:]).sum(axis=1)
        acc = acc.reshape(k, out_shape[1], f1, acc.shape[2]).sum(axis=2)
        acc = acc.reshape(k, out_shape[1], out_shape[2], f2).sum(axis=3)
        out[o:o + k] = acc / np.float32(f0 * f1 * f2) if mean else acc
    return out


def block_mean(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean over blocks of ``factors`` voxels (float32)."""
    return _block_reduce(array, factors, mean=True)


def block_sum(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Sum over blocks of ``factors`` voxels (float32), e.g. voxel counts of a mask."""
    return _block_reduce(array, factors, mean=False)


def upsample(array: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour inverse of :func:`block_mean`: repeat each block, crop to ``shape``."""
    f0, f1, f2 = factors
    in_plane = np.repeat(np.repeat(array, f1, axis=1), f2, axis=2)[:, : shape[1], : shape[2]]
    out = np.empty(shape, dtype=array.dtype)
    for k in range(f0):
        target = out[k::f0]
        target[...] = in_plane[: target.shape[0]]
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of ``mask`` (empty if ``mask`` is empty)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every slice (axis 0) at once: background connects only within a slice."""
    objects = ndimage.find_objects(mask.astype(np.uint8))
    if not objects:
        return mask.copy()
    box = objects[0]
    padded = np.pad(mask[box], ((1, 1), (0, 0), (0, 0)))
    return _paste(mask.shape, box, ndimage.binary_fill_holes(padded, structure=_IN_PLANE)[1:-1])


def nearest_seed_split(mask: np.ndarray, labels: np.ndarray, keep: np.ndarray,
                       spacing: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """Share ``mask`` among the regions ``keep`` of ``labels``: each voxel goes to the nearest one.

    The seeds are eroded lungs, so what is left to share is a thin border (and the junction
    between the lungs), where the nearest seed in millimetres is the right lung to give it to.
    """
    seeds = np.zeros(mask.shape, dtype=np.int16)
    for i, value in enumerate(keep, start=1):
        seeds[labels == value] = i
    index = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_distances=False,
                                           return_indices=True)
    nearest = seeds[tuple(index)]
    return [(nearest == i) & mask for i in range(1, len(keep) + 1)]


def _paste(shape: tuple[int, ...], box: tuple[slice, ...], part: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[box] = part
    return out


def lung_stats(labels: np.ndarray, hu: np.ndarray, low_threshold: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts, HU sums and counts below ``low_threshold`` of labels 2 and 3 (index = label)."""
    counts = np.zeros(5, dtype=np.int64)
    sums = np.zeros(5, dtype=np.float64)
    low = np.zeros(5, dtype=np.int64)
    for start in range(0, labels.shape[0], 16):
        lab, values = labels[start:start + 16], hu[start:start + 16]
        for label in (2, 3):
            inside = values[lab == label]
            counts[label] += inside.size
            sums[label] += float(inside.sum(dtype=np.float64))
            low[label] += int(np.count_nonzero(inside < low_threshold))
    return counts, sums, low


__all__ = ["LungAnalyzer", "LungAnalyzerConfig", "LAA_REPORT_CUTOFF_PERCENT"]
