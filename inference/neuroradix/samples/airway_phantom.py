"""A synthetic thorax with a known airway tree, known emphysema per lung zone and a known HU offset.

Built on :func:`neuroradix.samples.phantom.thorax_phantom` (body, lungs, trachea and main bronchi):
from the end of each main bronchus a tree of tapering tubes with soft-tissue walls branches
dichotomously down to generation 5 (trachea 0, main bronchi 1, lobar 2, segmental 3,
subsegmental 4 and 5): 1 + 2 + 4 + 8 + 16 + 32 = 63 branches. The parenchyma (lung minus the
lumen and walls of the tree) gets emphysema clusters (-975 HU) in a given fraction of each
equal-volume cranio-caudal third of each lung, normal lung -850 HU, Gaussian noise, and the
whole image may be shifted by a calibration offset (tracheal air then reads -1000 + offset).

The ground truth is exact on the voxel grid: :class:`AirwayPhantom` carries the branches (with
their voxel masks), the parenchyma and zone masks, and the LAA-950 % of every zone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from neuroradix.samples.phantom import thorax_phantom
from neuroradix.types import Volume

logger = logging.getLogger(__name__)

ZONES = ("upper", "middle", "lower")
#: Default emphysema fraction per zone: upper-zone predominant, as in centrilobular emphysema.
DEFAULT_ZONE_FRACTIONS = {"upper": 0.18, "middle": 0.08, "lower": 0.03}
NORMAL_HU, EMPHYSEMA_HU, WALL_HU, AIR_HU = -850.0, -975.0, 40.0, -1000.0


@dataclass(frozen=True)
class Branch:
    """One tube of the tree: a generation, its centre line (LPS mm) and lumen radius (mm)."""

    generation: int
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius_mm: float
    mask: np.ndarray = field(repr=False, compare=False)  # lumen voxels that belong to this branch only


@dataclass
class AirwayPhantom:
    """The phantom CT and everything known about it."""

    volume: Volume
    masks: dict[str, np.ndarray]  # body, left_lung, right_lung, parenchyma_left/right, airway_tree, emphysema
    branches: list[Branch]
    zone_laa_percent: dict[tuple[str, str], float]  # (side, zone) -> LAA-950 % of the parenchyma
    zone_masks: dict[tuple[str, str], np.ndarray]
    hu_offset: float


def _tube(points: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray:
    """Boolean: which of ``points`` (N x 3, mm) lie within ``radius`` of the segment start-end."""
    d = end - start
    t = np.clip(((points - start) @ d) / float(d @ d), 0.0, 1.0)
    closest = start + t[:, None] * d
    return np.einsum("ij,ij->i", points - closest, points - closest) <= radius**2


def _tree(start: np.ndarray, direction: np.ndarray, side: float) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """Centre lines of generations 2-5 from the end of a main bronchus (``side`` -1 right, +1 left)."""
    spreads = {
        2: (np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0])),
        3: (np.array([0.0, 0.9, 0.0]), np.array([0.0, -0.9, 0.0])),
        4: (np.array([0.7 * side, 0.0, 0.0]), np.array([-0.45 * side, 0.0, 0.0])),
        5: (np.array([0.0, 0.6, 0.0]), np.array([0.0, -0.6, 0.0])),
    }
    lengths = {2: 28.0, 3: 20.0, 4: 15.0, 5: 11.0}
    radii = {2: 3.6, 3: 2.9, 4: 2.4, 5: 2.0}
    out = []
    frontier = [(start, direction)]
    for generation in (2, 3, 4, 5):
        nxt = []
        for origin, parent_dir in frontier:
            for spread in spreads[generation]:
                d = spread + (0.35 * parent_dir if generation > 2 else np.array([0.3 * side, 0.0, 0.0]))
                d = d / np.linalg.norm(d)
                end = origin + lengths[generation] * d
                out.append((generation, origin, end, radii[generation]))
                nxt.append((end, d))
        frontier = nxt
    return out


def _fit(start: np.ndarray, stop: np.ndarray, centre: np.ndarray, radius: float, inside) -> np.ndarray:
    """The end of a branch from ``start`` towards ``stop`` that keeps it inside the lung: shortened
    and, when that is not enough, turned towards the lung's centre."""
    length = float(np.linalg.norm(stop - start))
    d = (stop - start) / length
    to_centre = (centre - start) / max(float(np.linalg.norm(centre - start)), 1e-6)
    for turn in (0.0, 0.5, 1.0, 2.0, 4.0):
        direction = d + turn * to_centre
        direction /= np.linalg.norm(direction)
        for shrink in (1.0, 0.8, 0.6, 0.45):
            end = start + shrink * length * direction
            if inside(start, end, radius):
                return end
    return start + 0.45 * length * d


def zone_masks_by_rank(mask: np.ndarray, z_of_slice: np.ndarray) -> dict[str, np.ndarray]:
    """Equal-volume cranio-caudal thirds of ``mask`` (axis 0 runs along patient z)."""
    coords = np.nonzero(mask)
    order = np.argsort(z_of_slice[coords[0]], kind="stable")  # inferior first
    n = order.size
    out = {}
    for name, (lo, hi) in zip(("lower", "middle", "upper"), ((0, n // 3), (n // 3, 2 * n // 3), (2 * n // 3, n))):
        zone = np.zeros(mask.shape, dtype=bool)
        pick = order[lo:hi]
        zone[coords[0][pick], coords[1][pick], coords[2][pick]] = True
        out[name] = zone
    return out


def airway_phantom(
    shape: tuple[int, int, int] = (128, 192, 192),
    spacing: float = 1.25,
    *,
    zone_fractions: dict[str, float] | None = None,
    hu_offset: float = 0.0,
    noise: float = 20.0,
    seed: int = 0,
) -> AirwayPhantom:
    """Make the phantom.

    Parameters
    ----------
    shape:
        Grid size (slices, rows, columns) of an axial grid with isotropic ``spacing`` (mm).
    zone_fractions:
        Emphysema fraction of the parenchyma in the upper, middle and lower third of each lung.
    hu_offset:
        Added to every voxel after noise (a scanner calibration error).
    noise:
        Gaussian noise (HU); normal lung is kept above -940 HU and emphysema below -955 HU.
    seed:
        Seed of the noise and of the emphysema clusters.

    Returns
    -------
    AirwayPhantom
    """
    fractions = dict(DEFAULT_ZONE_FRACTIONS if zone_fractions is None else zone_fractions)
    if set(fractions) != set(ZONES) or not all(0.0 <= f <= 0.6 for f in fractions.values()):
        raise ValueError(f"zone_fractions must give upper, middle and lower in [0, 0.6], got {zone_fractions!r}")
    base, masks = thorax_phantom(shape, (spacing, spacing, spacing), noise=0.0, seed=seed)
    array = base.array.copy()
    affine = base.affine
    rng = np.random.default_rng(seed)
    lungs = masks["left_lung"] | masks["right_lung"]
    depth_mm = ndimage.distance_transform_edt(lungs) * spacing  # how deep inside a lung each voxel lies
    inverse = np.linalg.inv(affine)
    trachea, airways = masks["trachea"], masks["airways"]
    bronchi = airways & ~trachea
    x_of_col = affine[0, 2] * np.arange(shape[2]) + affine[0, 3]
    carina_z = float(affine[2, 0] * np.flatnonzero(trachea.any(axis=(1, 2))).min() + affine[2, 3])
    tree = airways.copy()
    walls = np.zeros(shape, dtype=bool)
    owned = np.zeros(shape, dtype=np.int32)
    wall_mm = max(1.2, 0.8 * spacing)
    branches: list[Branch] = [Branch(0, (0.0, 0.0, 0.0), (0.0, 0.0, carina_z), 0.0, trachea.copy())]

    def to_index(point: np.ndarray) -> np.ndarray:
        return inverse[:3, :3] @ point + inverse[:3, 3]

    def inside(start: np.ndarray, stop: np.ndarray, radius: float) -> bool:
        for t in np.linspace(0.3, 1.0, 8):
            i = np.round(to_index(start + t * (stop - start))).astype(int)
            if np.any(i < 0) or np.any(i >= shape) or depth_mm[tuple(i)] < radius + wall_mm + 1.0:
                return False
        return True

    for side in (-1.0, 1.0):
        side_mask = bronchi & (np.sign(x_of_col) == side)[None, None, :]
        branches.append(Branch(1, (0.0, 0.0, carina_z), (side, 0.0, 0.0), 0.0, side_mask))
        coords = np.array(np.nonzero(side_mask)).T.astype(np.float64)
        lps = coords @ affine[:3, :3].T + affine[:3, 3]
        far = lps[np.abs(np.abs(lps[:, 0]) - np.abs(lps[:, 0]).max()) < 2 * spacing].mean(axis=0)
        origin = np.array([0.0, float(lps[:, 1].mean()), carina_z])
        direction = (far - origin) / np.linalg.norm(far - origin)
        ends: dict[tuple, np.ndarray] = {}
        lung_side = masks["left_lung" if side > 0 else "right_lung"]
        centre = np.array(ndimage.center_of_mass(lung_side)) @ affine[:3, :3].T + affine[:3, 3]
        for generation, start, stop, radius in _tree(far - spacing * direction, direction, side):
            start = ends.get(tuple(np.round(start, 3)), start)  # a parent shortened: start at its new end
            original = stop
            stop = _fit(start, original, centre, radius, inside)
            ends[tuple(np.round(original, 3))] = stop
            pad = radius + wall_mm + 2 * spacing
            corners = np.array([to_index(np.minimum(start, stop) - pad), to_index(np.maximum(start, stop) + pad)])
            lo = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, None)
            hi = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            idx = np.indices(hi - lo, dtype=np.float64).reshape(3, -1).T + lo
            pts = idx @ affine[:3, :3].T + affine[:3, 3]
            lumen = _tube(pts, start, stop, radius).reshape(hi - lo)
            walls[box] |= _tube(pts, start, stop, radius + wall_mm).reshape(hi - lo)
            own = lumen & (owned[box] == 0)
            owned[box][own] = len(branches) + 1
            tree[box] |= lumen
            branch_mask = np.zeros(shape, dtype=bool)
            branch_mask[box] = own
            branches.append(Branch(generation, tuple(start), tuple(stop), radius, branch_mask))
    walls &= ~tree
    array[walls & masks["body"]] = WALL_HU
    array[tree & masks["body"]] = AIR_HU
    parenchyma = {name: masks[f"{name}_lung"] & ~tree & ~walls for name in ("left", "right")}
    z_of_slice = affine[2, 0] * np.arange(shape[0]) + affine[2, 3]
    emphysema = np.zeros(shape, dtype=bool)
    zone_laa: dict[tuple[str, str], float] = {}
    zone_mask_out: dict[tuple[str, str], np.ndarray] = {}
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=1.5)
    for side_name, paren in parenchyma.items():
        array[paren] = NORMAL_HU
        for zone_name, zmask in zone_masks_by_rank(paren, z_of_slice).items():
            values = field_[zmask]
            count = int(round(fractions[zone_name] * values.size))
            if count:
                cut = np.partition(values, values.size - count)[values.size - count]
                chosen = zmask & (field_ >= cut)
                emphysema |= chosen
            zone_mask_out[(side_name, zone_name)] = zmask
    array[emphysema] = EMPHYSEMA_HU
    if noise > 0:
        array += rng.standard_normal(shape, dtype=np.float32) * np.float32(noise)
        all_paren = parenchyma["left"] | parenchyma["right"]
        np.minimum(array, np.float32(-955.0), out=array, where=emphysema)
        np.maximum(array, np.float32(-940.0), out=array, where=all_paren & ~emphysema)
        np.maximum(array, np.float32(-1024.0), out=array)
    for key, zmask in zone_mask_out.items():
        zone_laa[key] = 100.0 * float(np.count_nonzero(array[zmask] < -950.0)) / max(1, int(zmask.sum()))
    array += np.float32(hu_offset)
    out_masks = dict(masks)
    out_masks.update(
        {
            "airway_tree": tree & masks["body"],
            "airway_walls": walls,
            "emphysema": emphysema,
            "parenchyma_left": parenchyma["left"],
            "parenchyma_right": parenchyma["right"],
        }
    )
    return AirwayPhantom(Volume(array, affine), out_masks, branches, zone_laa, zone_mask_out, float(hu_offset))


__all__ = ["AirwayPhantom", "Branch", "airway_phantom", "zone_masks_by_rank", "ZONES", "DEFAULT_ZONE_FRACTIONS"]
