"""A synthetic thorax CT with ground-truth masks, for tests, demos and benchmarks.

The anatomy is defined in patient coordinates (LPS, millimetres, origin at the centre of the
field of view) and scaled to the field of view, so any grid size works:

* body: an ellipse (soft tissue 40 HU) with a fat rim (-100 HU), on a table (200 HU);
* two lungs (-850 HU with noise), the **left lung on the patient's left (+x)** and smaller than
  the right one (the heart takes room on the left), as in real anatomy;
* trachea (-1000 HU) from the top of the volume to the carina, splitting into two main bronchi
  that enter the lungs, all with a soft-tissue wall; heart and mediastinum between the lungs; spine posterior (700 HU);
* a small bowel-gas pocket below the lungs (must not be taken for lung); air outside (-1000 HU).

``emphysema`` plants low-attenuation clusters (< -950 HU) in exactly that fraction of the lung
voxels. The volume is computed on a canonical axial grid with broadcasting (a few seconds for
300x512x512) and then reoriented with :func:`neuroradix.imaging.ctseries.reorient` when another
``orientation`` is asked for, so each voxel keeps its patient coordinate.

:func:`findings_phantom` is the small phantom of the training data (``neuroradix_train.data.phantoms``
builds a miniature CT-RATE dataset from it): a coarse thorax with TotalSegmentator-117 labels and
planted findings (:data:`PLANTED`), each with an imaging signature. Its arrays are pinned by
checksums in the tests (trained thresholds were measured on them); :data:`PHANTOM_VERSION` changes
whenever its anatomy or findings change, so datasets built by an older generator are rebuilt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from neuroradix.imaging.ctseries import reorient
from neuroradix.types import Volume

logger = logging.getLogger(__name__)

#: orientation name -> (axis order, flips) applied to the canonical grid
#: (slices inferior->superior, rows anterior->posterior, columns patient right->left).
ORIENTATIONS: dict[str, tuple[tuple[int, int, int], tuple[bool, bool, bool]]] = {
    "axial": ((0, 1, 2), (False, False, False)),
    "flipped-columns": ((0, 1, 2), (False, False, True)),  # column index runs towards patient right
    "flipped-rows": ((0, 1, 2), (False, True, False)),  # row index runs towards anterior
    "flipped-slices": ((0, 1, 2), (True, False, False)),  # head first: slices run superior->inferior
    "transposed": ((0, 2, 1), (False, False, False)),  # rows run along x, columns along y
}

HU = {
    "air": -1000.0,
    "lung": -850.0,
    "emphysema": -975.0,
    "soft": 40.0,
    "fat": -100.0,
    "heart": 50.0,
    "bone": 700.0,
    "table": 200.0,
}


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """``((x - cx) / ax)^2 + ((y - cy) / ay)^2`` with broadcasting (float32)."""
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2


class _Grid:
    """Coordinates (LPS mm) of the canonical grid as broadcastable 1-D axes, with box helpers."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.z, self.y, self.x = (((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s) for n, s in zip(shape, spacing))

    def box(self, lo: tuple[float, float, float], hi: tuple[float, float, float]) -> tuple[slice, slice, slice]:
        """Index slices covering the LPS box ``lo..hi`` given as (x, y, z)."""
        out = []
        for c, a, b in zip((self.z, self.y, self.x), lo[::-1], hi[::-1]):
            inside = np.nonzero((c >= a) & (c <= b))[0]
            out.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
        return tuple(out)  # type: ignore[return-value]

    def axes(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinates of the voxels in ``box``."""
        return (self.z[box[0]][:, None, None], self.y[box[1]][None, :, None], self.x[box[2]][None, None, :])

    def full(self, box: tuple[slice, slice, slice], sub: np.ndarray) -> np.ndarray:
        """A full-size boolean mask holding ``sub`` at ``box``."""
        out = np.zeros(self.shape, dtype=bool)
        out[box] = sub
        return out


def _tube(grid: _Grid, start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray:
    """Full-size mask of a cylinder of ``radius`` from ``start`` to ``end`` (x, y, z in mm)."""
    pad = radius + 1.0
    box = grid.box(tuple(np.minimum(start, end) - pad), tuple(np.maximum(start, end) + pad))
    z, y, x = grid.axes(box)
    d = end - start
    t = np.clip(((x - start[0]) * d[0] + (y - start[1]) * d[1] + (z - start[2]) * d[2]) / float(d @ d), 0.0, 1.0)
    dist2 = (x - start[0] - t * d[0]) ** 2 + (y - start[1] - t * d[1]) ** 2 + (z - start[2] - t * d[2]) ** 2
    return grid.full(box, dist2 <= radius**2)


def thorax_phantom(
    shape: tuple[int, int, int] = (64, 96, 96),
    spacing: tuple[float, float, float] = (2.5, 2.0, 2.0),
    *,
    emphysema: float = 0.0,
    seed: int = 0,
    orientation: str = "axial",
    noise: float = 20.0,
) -> tuple[Volume, dict[str, np.ndarray]]:
    """Make a synthetic thorax CT and its ground-truth masks.

    Parameters
    ----------
    shape, spacing:
        Grid size and voxel size in mm along (slice, row, column) of the canonical axial grid
        (before ``orientation`` is applied).
    emphysema:
        Fraction of lung voxels (0 to 0.8) replaced by low-attenuation clusters (-975 HU, all
        below -950 HU).
    seed:
        Seed of the noise and of the emphysema clusters.
    orientation:
        One of :data:`ORIENTATIONS`; anything but ``"axial"`` gives the same anatomy on a grid
        whose axes are flipped or swapped (the affine says so).
    noise:
        Standard deviation of the Gaussian noise in HU; lung voxels are kept above -950 HU
        unless they are emphysema, so LAA-950 equals the planted fraction.

    Returns
    -------
    volume, masks:
        The CT (float32 HU) and boolean masks on the same grid: ``body`` (everything inside the
        skin, lungs included), ``left_lung``, ``right_lung`` (airways excluded), ``airways``,
        ``trachea``, ``heart``, ``spine``, ``table``, ``bowel_gas`` and ``emphysema``.
    """
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes of at least 16, got {shape!r}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes, got {spacing!r}")
    if not 0.0 <= emphysema <= 0.8:
        raise ValueError(f"emphysema must be a fraction in [0, 0.8], got {emphysema!r}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {sorted(ORIENTATIONS)}, got {orientation!r}")
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    rng = np.random.default_rng(seed)
    grid = _Grid(shape, tuple(float(s) for s in spacing))  # type: ignore[arg-type]
    sz, sy, sx = (float(s) for s in spacing)
    fov_x, fov_y = shape[2] * sx, shape[1] * sy
    z0, z1 = float(grid.z[0]), float(grid.z[-1])
    z_of = lambda frac: z0 + frac * (z1 - z0)  # noqa: E731  fraction of the height -> z in mm

    # 2-D parts, the same on every slice: body with fat rim, spine, table.
    y2, x2 = grid.y[:, None], grid.x[None, :]
    bx, by, cy = 0.45 * fov_x, 0.33 * fov_y, -0.04 * fov_y
    body_e = _ellipse(x2, y2, 0.0, cy, bx, by)
    body2d = body_e <= 1.0
    spine2d = _ellipse(x2, y2, 0.0, cy + 0.74 * by, 0.12 * bx, 0.17 * by) <= 1.0
    table_top = cy + by + 0.03 * fov_y
    table2d = (y2 >= table_top) & (y2 <= table_top + 0.04 * fov_y) & (np.abs(x2) <= 0.47 * fov_x)
    slice_hu = np.full(body2d.shape, HU["air"], dtype=np.float32)
    slice_hu[table2d] = HU["table"]
    slice_hu[body2d] = HU["soft"]
    slice_hu[body2d & (body_e > 0.86)] = HU["fat"]
    slice_hu[spine2d] = HU["bone"]

    # Lungs: ellipsoids with a rounded base and an apex; the right lung (x < 0) is the larger.
    def lung(cx: float, ax: float, ay: float, base: float, apex: float) -> np.ndarray:
        box = grid.box(((cx - ax) * bx, cy - ay * by, z_of(base)), ((cx + ax) * bx, cy + ay * by, z_of(apex)))
        z, y, x = grid.axes(box)
        h = np.clip((z - z_of(base)) / (z_of(apex) - z_of(base)), 0.0, 1.0)
        scale = np.maximum(np.sqrt(np.clip(1.0 - h**2, 0.0, None)) * np.sqrt(np.clip(h * 6.0, 0.0, 1.0)), 1e-3)
        return grid.full(box, _ellipse(x, y, cx * bx, cy + 0.02 * by, ax * bx * scale, ay * by * scale) <= 1.0)

    def ellipsoid(cx: float, cyy: float, ct: float, ax: float, ay: float, at: float) -> np.ndarray:
        half_z = at * (z1 - z0)
        box = grid.box((cx - ax, cyy - ay, z_of(ct) - half_z), (cx + ax, cyy + ay, z_of(ct) + half_z))
        z, y, x = grid.axes(box)
        return grid.full(box, _ellipse(x, y, cx, cyy, ax, ay) + ((z - z_of(ct)) / half_z) ** 2 <= 1.0)

    heart = ellipsoid(0.12 * bx, cy - 0.22 * by, 0.33, 0.32 * bx, 0.40 * by, 0.22)
    bowel = ellipsoid(0.25 * bx, cy - 0.35 * by, 0.06, 0.12 * bx, 0.12 * by, 0.05)

    # Airways: trachea from the top to the carina, then two main bronchi into the hila.
    r_trachea, r_bronchus = max(0.065 * bx, 1.2 * sx), max(0.045 * bx, 1.0 * sx)
    carina = np.array([0.0, cy - 0.10 * by, z_of(0.66)])
    top = np.array([0.0, cy - 0.14 * by, z1 + sz])
    wall = 1.5 * max(sx, sy)  # airway walls (soft tissue) seal the lumen from the lung
    trachea = _tube(grid, top, carina, r_trachea)
    airways = trachea.copy()
    airway_walls = _tube(grid, top, carina, r_trachea + wall)
    for side in (-1.0, 1.0):
        hilum = np.array([side * 0.42 * bx, cy - 0.02 * by, z_of(0.55)])
        airways |= _tube(grid, carina, hilum, r_bronchus)
        airway_walls |= _tube(grid, carina, hilum, r_bronchus + wall)
    airway_walls &= ~airways

    body = np.empty(shape, dtype=bool)
    body[...] = body2d
    not_lung = heart | airways | airway_walls | ~body
    not_lung[:, :, np.abs(grid.x) < 0.07 * bx] = True  # mediastinum
    right = lung(-0.46, 0.36, 0.62, 0.14, 0.93) & ~not_lung
    left = lung(+0.47, 0.31, 0.58, 0.17, 0.91) & ~not_lung & ~right
    lungs = left | right

    volume = np.empty(shape, dtype=np.float32)
    volume[...] = slice_hu
    np.copyto(volume, np.float32(HU["heart"]), where=heart & body)
    np.copyto(volume, np.float32(HU["soft"]), where=airway_walls & body)
    np.copyto(volume, np.float32(HU["lung"]), where=lungs)
    np.copyto(volume, np.float32(HU["air"]), where=(airways | bowel) & body)
    planted = _plant_emphysema(lungs, emphysema, rng) if emphysema > 0 else np.zeros(shape, dtype=bool)
    np.copyto(volume, np.float32(HU["emphysema"]), where=planted)
    if noise > 0:
        _add_noise(volume, noise, rng)
        # Keep the planted classes on their side of -950 HU whatever the noise draws.
        np.minimum(volume, np.float32(-955.0), out=volume, where=planted)
        np.maximum(volume, np.float32(-940.0), out=volume, where=lungs & ~planted)
        np.maximum(volume, np.float32(-1024.0), out=volume)

    def tile(mask2d: np.ndarray) -> np.ndarray:
        out = np.empty(shape, dtype=bool)
        out[...] = mask2d
        return out

    masks = {
        "body": body,
        "left_lung": left,
        "right_lung": right,
        "airways": airways & body,
        "trachea": trachea & body,
        "heart": heart & body & ~lungs,
        "spine": tile(spine2d),
        "table": tile(table2d),
        "bowel_gas": bowel & body,
        "emphysema": planted,
    }

    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, sx], [0, sy, 0], [sz, 0, 0]], dtype=np.float64)
    affine[:3, 3] = [float(grid.x[0]), float(grid.y[0]), z0]
    if orientation != "axial":
        order, flips = ORIENTATIONS[orientation]
        for name in masks:
            masks[name] = np.ascontiguousarray(reorient(masks[name], affine, order, flips)[0])
        array, affine = reorient(volume, affine, order, flips)
        volume = np.ascontiguousarray(array)
    return Volume(volume, affine), masks


def _add_noise(volume: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    """Add Gaussian noise in place; large volumes reuse a bank of 31 noise slices (drawing 78 M
    normal numbers takes seconds, and the repetition does not matter for a phantom)."""
    if volume.size <= 16_000_000:
        volume += rng.standard_normal(volume.shape, dtype=np.float32) * np.float32(sigma)
        return
    bank = rng.standard_normal((31, *volume.shape[1:]), dtype=np.float32) * np.float32(sigma)
    for index in range(volume.shape[0]):
        volume[index] += bank[(index * 7) % len(bank)]


def _plant_emphysema(lungs: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Pick ``fraction`` of the lung voxels as smooth random clusters (a thresholded blurred field)."""
    planted = np.zeros(lungs.shape, dtype=bool)
    where = ndimage.find_objects(lungs.astype(np.uint8))
    if not where or where[0] is None:
        return planted
    box = where[0]
    sub = lungs[box]
    step = 4
    field = rng.standard_normal(tuple(-(-n // step) for n in sub.shape)).astype(np.float32)
    field = ndimage.gaussian_filter(field, sigma=1.0)
    for axis in range(3):
        field = np.repeat(field, step, axis=axis)
    field = field[: sub.shape[0], : sub.shape[1], : sub.shape[2]]
    # A tiny jitter breaks the ties of the blocky field so the cut picks an exact count.
    values = field[sub] + rng.uniform(0, 1e-4, int(sub.sum())).astype(np.float32)
    count = int(round(fraction * values.size))
    if count == 0:
        return planted
    threshold = np.partition(values, values.size - count)[values.size - count]
    chosen = np.zeros(sub.shape, dtype=bool)
    chosen[sub] = values >= threshold
    planted[box] = chosen
    return planted


def ground_truth_volumes_ml(volume: Volume, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Volumes in mL of the ``left_lung``, ``right_lung`` and ``airways`` masks."""
    return {
        name: float(masks[name].sum()) * volume.voxel_volume_ml
        for name in ("left_lung", "right_lung", "airways")
        if name in masks
    }


# --- The training phantom: coarse anatomy with TotalSegmentator-117 labels and planted findings ---

TOTALSEG_IDS: dict[str, int] = {
    "lung_upper_lobe_left": 10,
    "lung_lower_lobe_left": 11,
    "lung_upper_lobe_right": 12,
    "lung_middle_lobe_right": 13,
    "lung_lower_lobe_right": 14,
    "esophagus": 15,
    "trachea": 16,
    "vertebrae_T6": 38,
    "heart": 51,
    "aorta": 52,
    "sternum": 116,
}
"""TotalSegmentator-117 ids of the organs :func:`findings_phantom` labels (see totalseg117_labels.json)."""

PHANTOM_VERSION = "2"
"""Changes whenever :func:`findings_phantom`'s anatomy or findings change; a dataset of another version is rebuilt."""

PLANTED = (
    "Emphysema",
    "Pleural effusion",
    "Cardiomegaly",
    "Lung nodule",
    "Consolidation",
    "Arterial wall calcification",
)
"""Findings (CT-RATE names) :func:`findings_phantom` can plant, each with an imaging signature."""


@dataclass(frozen=True)
class PhantomSpec:
    """Grid of :func:`findings_phantom`: voxels ``[slice, row, col]`` and spacing in mm."""

    shape: tuple[int, int, int] = (40, 48, 56)
    spacing: tuple[float, float, float] = (7.5, 6.0, 6.0)

    @property
    def affine(self) -> np.ndarray:
        """Index-to-LPS affine of the grid: slices inferior to superior, rows anterior to
        posterior, columns right to left, voxel ``(0, 0, 0)`` at the origin."""
        affine = np.eye(4)
        affine[:3, :3] = np.array([[0, 0, self.spacing[2]], [0, self.spacing[1], 0], [self.spacing[0], 0, 0]])
        return affine


def _ellipsoid(grid: tuple[np.ndarray, ...], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    z, y, x = grid
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (x - centre[2]) / radii[2]
    ) ** 2 <= 1.0


def findings_phantom(
    findings: Sequence[str], seed: int, spec: PhantomSpec = PhantomSpec()
) -> tuple[np.ndarray, np.ndarray]:
    """One training phantom: an HU array and a TotalSegmentator-117 label map.

    Parameters
    ----------
    findings:
        Names from :data:`PLANTED` to plant (emphysema bullae, a right pleural effusion, an
        enlarged heart, right-lung nodules, left-lung consolidation, aortic wall calcification).
    seed:
        Seed of the organ-size jitter, of the findings' placement and of the noise.
    spec:
        The grid (:attr:`PhantomSpec.affine` places it in LPS).

    Returns
    -------
    hu, labels:
        float32 HU and uint8 label map (:data:`TOTALSEG_IDS`), both ``[slice, row, col]``: rows
        run anterior to posterior, columns right to left of the patient (LPS), slices inferior
        to superior. Each lung is one lobe (its upper-lobe id); fissures are not modelled.

    Raises
    ------
    ValueError
        A finding is not in :data:`PLANTED`.
    """
    unknown = set(findings) - set(PLANTED)
    if unknown:
        raise ValueError(f"findings cannot be planted: {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    S, R, C = spec.shape
    grid = tuple(a.astype(np.float32) for a in np.meshgrid(np.arange(S), np.arange(R), np.arange(C), indexing="ij"))
    z, y, x = grid
    j = lambda s: 1.0 + rng.uniform(-s, s)  # noqa: E731 - tiny jitter helper
    hu = np.full(spec.shape, -1000.0, dtype=np.float32)
    lab = np.zeros(spec.shape, dtype=np.uint8)
    cz, cy, cx = S / 2, R / 2, C / 2
    body = _ellipsoid(grid, (cz, cy, cx), (S * 0.8, R * 0.42 * j(0.05), C * 0.45 * j(0.05)))
    hu[body] = -80.0  # fat / soft tissue mix
    hu[body & ~_ellipsoid(grid, (cz, cy, cx), (S * 0.8, R * 0.36, C * 0.40))] = 40.0  # muscle wall
    lung_r = _ellipsoid(grid, (cz, cy, cx - C * 0.19), (S * 0.42 * j(0.08), R * 0.3 * j(0.08), C * 0.15 * j(0.08)))
    lung_l = _ellipsoid(grid, (cz, cy, cx + C * 0.19), (S * 0.42 * j(0.08), R * 0.3 * j(0.08), C * 0.14 * j(0.08)))
    for mask, lobe in ((lung_r, "lung_upper_lobe_right"), (lung_l, "lung_upper_lobe_left")):
        hu[mask] = -850.0
        lab[mask] = TOTALSEG_IDS[lobe]
    heart_scale = 1.45 if "Cardiomegaly" in findings else 1.0
    heart = _ellipsoid(
        grid,
        (cz - S * 0.12, cy - R * 0.08, cx + C * 0.04),
        np.array((S * 0.14, R * 0.14, C * 0.1)) * heart_scale * j(0.05),
    )
    hu[heart] = 45.0
    lab[heart] = TOTALSEG_IDS["heart"]
    # tubes with adult calibres, in voxels of the in-plane spacing: aorta ~26 mm, trachea ~20 mm across
    aorta_r, trachea_r = 13.0 / spec.spacing[1] * j(0.1), 10.0 / spec.spacing[1]
    aorta = (
        ((y - (cy + R * 0.08)) ** 2 + (x - (cx + C * 0.02)) ** 2 <= aorta_r**2)
        & (z > cz - S * 0.35)
        & (z < cz + S * 0.3)
    )
    hu[aorta] = 40.0
    lab[aorta] = TOTALSEG_IDS["aorta"]
    trachea = ((y - (cy - R * 0.05)) ** 2 + (x - cx) ** 2 <= trachea_r**2) & (z > cz + S * 0.05)
    hu[trachea] = -1000.0
    lab[trachea] = TOTALSEG_IDS["trachea"]
    spine = ((y - (cy + R * 0.3)) ** 2 + (x - cx) ** 2 <= 2.6**2) & body
    hu[spine] = 500.0
    lab[spine] = TOTALSEG_IDS["vertebrae_T6"]
    lungs = lung_r | lung_l
    if "Emphysema" in findings:  # ~40 bullae of 3 cm inside the lungs: ~15 % of the lung volume below -950 HU
        inside = np.argwhere(lungs)
        for c in inside[rng.choice(len(inside), size=40, replace=False)]:
            hu[lungs & _ellipsoid(grid, c, (2.0, 2.5, 2.5))] = -990.0
    if "Pleural effusion" in findings:
        eff = lung_r & (y > cy + R * 0.1)
        hu[eff] = 10.0
        lab[eff] = 0  # fluid in the pleural space is not lung (lung masks exclude an effusion)
    if "Consolidation" in findings:
        c = (cz + rng.uniform(-4, 4), cy, cx + C * 0.19)
        hu[lung_l & _ellipsoid(grid, c, (6.0, 6.0, 4.0))] = 30.0
    if "Lung nodule" in findings:  # 5 solid nodules of ~2.5 cm in the right lung
        for _ in range(5):
            c = (cz + rng.uniform(-10, 10), cy + rng.uniform(-8, 8), cx - C * 0.19 + rng.uniform(-3, 3))
            hu[lung_r & _ellipsoid(grid, c, (1.7, 2.1, 2.1))] = 40.0
    if "Arterial wall calcification" in findings:
        wall = (
            ((y - (cy + R * 0.08)) ** 2 + (x - (cx + C * 0.02)) ** 2 <= (aorta_r + 1.0) ** 2)
            & ~aorta
            & (z > cz - S * 0.35)
            & (z < cz + S * 0.3)
        )
        hu[wall & (rng.random(spec.shape) < 0.5)] = 900.0
    hu += rng.normal(0.0, 15.0, spec.shape).astype(np.float32)
    return hu, lab


__all__ = [
    "thorax_phantom",
    "ORIENTATIONS",
    "HU",
    "ground_truth_volumes_ml",
    "findings_phantom",
    "PhantomSpec",
    "PLANTED",
    "PHANTOM_VERSION",
    "TOTALSEG_IDS",
]
