"""Airway tree from the trachea into both lungs: region growing with explosion control and wavefront leak pruning.

Method (classical, no model):

1. **Threshold selection by explosion control** (Mori et al., "Automated extraction and
   visualization of bronchus from 3D CT images of lung", Lecture Notes in Computer Science 905,
   1995, and Mori et al. 1996): the 6-connected component of ``HU < T`` that holds the trachea seed
   is grown for rising thresholds ``T``; the first threshold at which its volume jumps (a leak into
   the parenchyma) ends the search and the last good threshold is kept.
2. **Wavefront propagation** (Schlathoelter et al., "Simultaneous segmentation and tree
   reconstruction of the airways for virtual bronchoscopy", SPIE Medical Imaging 2002; the same
   front-based leak test as Tschirren et al., IEEE TMI 24(12):1529-1539, 2005, and van Rikxoort
   et al., "Automatic segmentation of the airway tree from thoracic CT scans using a multi-threshold
   approach", Proc. Second International Workshop on Pulmonary Image Analysis, 2009): the geodesic
   distance from the top of the trachea inside the grown mask is cut into shells; the connected
   pieces of each shell (fronts) form a tree. A front much larger than the fronts before it on its
   path is a leak: it and everything beyond it is removed.
3. **Branches and generations**: a front that splits into two or more pieces that each go on for
   at least ``min_branch_mm`` is a bifurcation. The trachea is generation 0, the main bronchi 1,
   lobar bronchi 2, segmental bronchi 3 (anatomical numbering); shorter side pieces stay in the
   mask but are not counted as branches.
4. **Small-airway extension** (the local multi-threshold idea of van Rikxoort et al. 2009, with
   Mori's explosion control applied per extension instead of to the whole tree): in a dense lung
   the global threshold that keeps the tree out of the parenchyma (about -860 HU smoothed) stops
   at the narrowings of the segmental and subsegmental bronchi, whose lumen beyond reads below
   -950 HU and would count as "emphysema". So, for rising raw thresholds ``T`` (-950 ... -875 HU),
   each component of ``HU < T`` that touches the tree (or an extension kept at a lower ``T``) is
   added while it stays below ``extension_max_ml``; a component that grows past it has met the
   parenchyma (a leak), and only what was kept at the lower threshold stays. Components and
   contact are 6-connected plus the diagonal steps whose corner is not wall (below
   ``extension_gap_hu``): a thin digitised wall is tight only for face steps. No
   border pass here: around a small bronchus in a dense lung, raw HU below ``border_hu`` is the
   parenchyma itself. The extensions belong to the tree's mask but not to its branch count (they
   are pieces, not a topology).

Everything here works on a canonical axial grid (slices inferior to superior) cropped to the chest;
:mod:`neuroradix.analyzers.lung` builds that grid and maps the tree back to the source grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AirwayConfig:
    """Parameters of :func:`grow_airway_tree` (HU, mm, mL)."""

    target_spacing_mm: float = 1.25
    thresholds_hu: tuple[float, ...] = (-980.0, -960.0, -940.0, -920.0, -900.0, -880.0, -860.0)
    explosion_ratio: float = 1.5
    explosion_ml: float = 20.0
    max_ml: float = 400.0
    leak_ratio: float = 3.0
    min_leak_voxels: int = 40
    min_branch_mm: float = 4.0
    border_hu: float = -600.0
    extension_thresholds_hu: tuple[float, ...] = (-950.0, -925.0, -900.0, -875.0)
    extension_max_ml: float = 1.0
    extension_gap_hu: float = -500.0

    def __post_init__(self) -> None:
        if self.target_spacing_mm <= 0 or self.min_branch_mm <= 0:
            raise ValueError("target_spacing_mm and min_branch_mm must be positive")
        if list(self.thresholds_hu) != sorted(self.thresholds_hu) or not self.thresholds_hu:
            raise ValueError("thresholds_hu must be a non-empty rising sequence")
        if list(self.extension_thresholds_hu) != sorted(self.extension_thresholds_hu):
            raise ValueError("extension_thresholds_hu must be a rising sequence (empty: no extension)")
        if self.explosion_ratio <= 1.0 or self.leak_ratio <= 1.0:
            raise ValueError("explosion_ratio and leak_ratio must be above 1")


@dataclass
class AirwayTree:
    """The segmented airway tree on the grid it was grown on."""

    mask: np.ndarray
    threshold_hu: float | None
    branch_count: int
    generations: int  # highest generation reached (trachea = 0), -1 without a tree
    branches_per_generation: tuple[int, ...]
    leaks_removed: int
    branch_ids: np.ndarray  # per voxel of ``mask``: branch number (0 outside and in extensions)
    extension_ml: float = 0.0  # small-airway lumen added beyond the front tree (step 4)

    @property
    def found(self) -> bool:
        """True when any airway voxel was found."""
        return bool(self.mask.any())


def empty_tree(shape: tuple[int, ...]) -> AirwayTree:
    """A tree with nothing in it (no trachea found)."""
    return AirwayTree(np.zeros(shape, dtype=bool), None, 0, -1, (), 0, np.zeros(shape, dtype=np.int32))


def grow_airway_tree(
    hu: np.ndarray,
    spacing: np.ndarray,
    seed: tuple[int, int, int],
    allowed: np.ndarray,
    config: AirwayConfig = AirwayConfig(),
) -> AirwayTree:
    """Segment the airway tree connected to ``seed`` (a voxel in the tracheal lumen).

    Parameters
    ----------
    hu:
        HU on a canonical axial grid (axis 0 inferior to superior).
    spacing:
        Voxel size in mm along the three axes.
    seed:
        A voxel index inside the trachea.
    allowed:
        Where the tree may grow (inside the body).
    config:
        Thresholds and leak parameters.

    Returns
    -------
    AirwayTree
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), sigma=0.5)
    best, used = None, None
    best_ml = 0.0
    for threshold in config.thresholds_hu:
        if smooth[seed] >= threshold:
            continue
        labels, _ = ndimage.label((smooth < threshold) & allowed)
        grown = labels == labels[seed]
        ml = float(np.count_nonzero(grown)) * voxel_ml
        exploded = ml > config.explosion_ratio * best_ml and ml - best_ml > config.explosion_ml
        if ml > config.max_ml or (used is not None and exploded):
            logger.debug("airway growth stops at %.0f HU (%.0f mL after %.0f mL: explosion)", threshold, ml, best_ml)
            break
        best, best_ml, used = grown, ml, threshold
    if best is None:
        return empty_tree(hu.shape)
    # Give back the lumen's border voxels that the smoothing pushed above the threshold: a lumen
    # edge sits half-way between air and wall (about -500 HU), so raw HU below -600 is still lumen.
    best = best | (ndimage.binary_dilation(best) & (hu < config.border_hu) & allowed)
    tree = _front_tree(best, spacing, config)
    tree.threshold_hu = used
    extension = extend_small_airways(hu, tree.mask, allowed, voxel_ml, config)
    tree.mask |= extension
    tree.extension_ml = round(float(np.count_nonzero(extension)) * voxel_ml, 2)
    logger.info(
        "airway tree: threshold %.0f HU, %d branches, generation %d reached, %d leak(s) removed, "
        "%.1f mL of small-airway lumen added",
        used,
        tree.branch_count,
        tree.generations,
        tree.leaks_removed,
        tree.extension_ml,
    )
    return tree


def extend_small_airways(
    hu: np.ndarray, tree: np.ndarray, allowed: np.ndarray, voxel_ml: float, config: AirwayConfig = AirwayConfig()
) -> np.ndarray:
    """Lumen of the smaller bronchi beyond ``tree`` (step 4 of the module docstring); returns the added voxels.

    Each component of ``hu < T`` inside ``allowed`` that touches the tree or an extension already
    kept is added while its volume stays at most ``config.extension_max_ml``, for each ``T`` of
    ``config.extension_thresholds_hu`` in turn (raw HU: the bronchi are a few voxels wide and
    smoothing would close them). Components are 6-connected plus the edge-diagonal steps whose
    corner reads below ``config.extension_gap_hu``: a diagonal step across a thin wall does not join.
    """
    if not config.extension_thresholds_hu or not tree.any():
        return np.zeros(hu.shape, dtype=bool)
    kept = np.zeros(hu.shape, dtype=bool)
    limit = config.extension_max_ml / voxel_ml
    open_ = hu < config.extension_gap_hu
    near_tree = _next_to_tree(tree, open_)
    dark = allowed & ~tree & (hu < config.extension_thresholds_hu[-1])
    for threshold in config.extension_thresholds_hu:
        candidate = dark & (hu < threshold)
        labels, count = ndimage.label(_bridged(candidate, open_ & ~tree))
        if count == 0:
            continue
        inside = labels[candidate]  # the candidates' labels, in a short 1-D array
        size = np.bincount(inside, minlength=count + 1)
        touching = np.zeros(count + 1, dtype=bool)
        touching[labels[near_tree & candidate]] = True
        touching[labels[kept]] = True  # kept voxels are below every later threshold: in a component
        touching[0] = False
        # A component past the limit keeps only what was kept at the lower threshold.
        kept[candidate] |= touching[inside] & (size[inside] <= limit)
    return kept


def _shifted(array: np.ndarray, offset: tuple[int, ...]) -> np.ndarray:
    """``out[p] = array[p + offset]``, False where ``p + offset`` is outside."""
    out = np.zeros_like(array)
    src = tuple(slice(max(0, o), n + min(0, o)) for o, n in zip(offset, array.shape))
    dst = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, array.shape))
    out[dst] = array[src]
    return out


def _edge_steps() -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """The 12 edge (diagonal) steps of the 26-neighbourhood, each with its two face steps."""
    steps = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        for sa in (-1, 1):
            for sb in (-1, 1):
                step_a = tuple(sa if axis == a else 0 for axis in range(3))
                step_b = tuple(sb if axis == b else 0 for axis in range(3))
                steps.append((tuple(x + y for x, y in zip(step_a, step_b)), step_a, step_b))
    return steps


def _next_to_tree(tree: np.ndarray, open_: np.ndarray) -> np.ndarray:
    """Voxels where a small bronchus can leave the tree: its face neighbours, and its edge neighbours
    when one of the two voxels at the corner between them is ``open_`` (no wall there).

    A thin wall is only tight for face steps: a voxel diagonal to the lumen may lie outside the
    wall (the airway phantom's one-voxel walls show it), while an oblique small bronchus leaves the
    tree through such a diagonal step, its corner voxels partial volume of lumen and wall.
    """
    near = ndimage.binary_dilation(tree)
    for both, step_a, step_b in _edge_steps():
        near |= _shifted(tree, both) & (_shifted(open_, step_a) | _shifted(open_, step_b))
    return near & ~tree


def _bridged(candidate: np.ndarray, open_: np.ndarray) -> np.ndarray:
    """``candidate`` plus the ``open_`` corner voxels of its diagonal pairs, for 6-connected labelling.

    Two candidate voxels diagonal to each other are joined only through an open corner, not
    across a wall (the same rule as :func:`_next_to_tree`); the corner voxels added here join the
    labels but are not candidates themselves.
    """
    out = candidate.copy()
    for both, step_a, step_b in _edge_steps():
        pair = candidate & _shifted(candidate, both)  # p and p + both
        out |= _shifted(pair, tuple(-x for x in step_a)) & open_  # the corner p + step_a
        out |= _shifted(pair, tuple(-x for x in step_b)) & open_
    return out


_FACE = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
_ALL = tuple(
    (a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) > (0, 0, 0)
)  # the 13 "forward" offsets of the 26-neighbourhood


def _neighbour_edges(
    index: np.ndarray, mask: np.ndarray, spacing: np.ndarray, offsets: tuple[tuple[int, int, int], ...] = _FACE
):
    """Pairs of neighbouring voxels of ``mask`` along ``offsets`` as (first, second, length mm)."""
    firsts, seconds, lengths = [], [], []
    for offset in offsets:
        lo = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, mask.shape))
        hi = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, mask.shape))
        both = mask[lo] & mask[hi]
        firsts.append(index[lo][both])
        seconds.append(index[hi][both])
        lengths.append(np.full(firsts[-1].size, float(np.linalg.norm(np.asarray(offset) * spacing))))
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(lengths)


def _front_tree(grown: np.ndarray, spacing: np.ndarray, config: AirwayConfig) -> AirwayTree:
    """Wavefronts of ``grown`` from its top, leak pruning, branch and generation count."""
    box = ndimage.find_objects(grown.astype(np.uint8))[0]
    mask = grown[box]
    coords = np.nonzero(mask)
    count = coords[0].size
    index = np.full(mask.shape, -1, dtype=np.int32)
    index[coords] = np.arange(count, dtype=np.int32)
    first, second, length = _neighbour_edges(index, mask, spacing)
    graph = sparse.csr_matrix((length, (first, second)), shape=(count, count))
    top = coords[0] == coords[0].max()  # the most superior voxels: the top of the trachea
    centre = np.array([c[top].mean() for c in coords[1:]])
    root = int(np.flatnonzero(top)[np.argmin((coords[1][top] - centre[0]) ** 2 + (coords[2][top] - centre[1]) ** 2)])
    distance = csgraph.dijkstra(graph, directed=False, indices=root)
    shell_mm = float(spacing.max())
    shell = np.where(np.isfinite(distance), distance // shell_mm, -1).astype(np.int64)

    # Fronts: 26-connected pieces of each shell; links between fronts of consecutive shells.
    first, second, _ = _neighbour_edges(index, mask, spacing, _ALL)
    same = shell[first] == shell[second]
    fronts_graph = sparse.csr_matrix((np.ones(int(same.sum())), (first[same], second[same])), shape=(count, count))
    n_fronts, front = csgraph.connected_components(fronts_graph, directed=False)
    size = np.bincount(front, minlength=n_fronts)
    front_shell = np.full(n_fronts, -1, dtype=np.int64)
    front_shell[front] = shell
    step = (~same) & (np.abs(shell[first] - shell[second]) == 1)
    a, b = front[first[step]], front[second[step]]
    low = np.where(shell[first[step]] < shell[second[step]], a, b)
    high = np.where(shell[first[step]] < shell[second[step]], b, a)
    parent = np.full(n_fronts, -1, dtype=np.int64)
    if low.size:
        pairs, votes = np.unique(np.stack([high, low]), axis=1, return_counts=True)
        order = np.lexsort((votes, pairs[0]))  # per child, the most-linked parent comes last
        parent[pairs[0, order]] = pairs[1, order]
    root_front = int(front[root])
    parent[root_front] = -1

    # Leak pruning, in order of distance: a front much larger than its path so far is a leak.
    by_shell = np.argsort(front_shell, kind="stable")
    typical = size.astype(np.float64)
    removed = np.zeros(n_fronts, dtype=bool)
    leaks = 0
    for f in by_shell:
        p = parent[f]
        if f == root_front or front_shell[f] < 0:
            continue
        if p < 0 or removed[p]:
            removed[f] = True
            continue
        if front_shell[f] * shell_mm < 15.0:  # the first fronts grow from a point to the tracheal disc
            typical[f] = max(typical[p], float(size[f]))
            continue
        if size[f] > config.leak_ratio * typical[p] and size[f] > config.min_leak_voxels:
            removed[f] = True
            leaks += 1
            continue
        typical[f] = 0.7 * typical[p] + 0.3 * size[f]

    # Height of each front's subtree (in shells) for dead-end pruning.
    kept = ~removed & (front_shell >= 0)
    height = np.zeros(n_fronts, dtype=np.int64)
    for f in by_shell[::-1]:
        p = parent[f]
        if kept[f] and p >= 0 and kept[p]:
            height[p] = max(height[p], height[f] + 1)
    children: dict[int, list[int]] = {}
    for f in np.flatnonzero(kept & (parent >= 0)):
        children.setdefault(int(parent[f]), []).append(int(f))
    min_shells = max(1, int(np.ceil(config.min_branch_mm / shell_mm)))

    branch_of = np.zeros(n_fronts, dtype=np.int32)
    per_generation: dict[int, int] = {0: 1}
    branch_of[root_front] = 1
    next_branch = 2
    stack = [(root_front, 0)]
    while stack:
        f, generation = stack.pop()
        kids = children.get(f, [])
        long = [k for k in kids if height[k] + 1 >= min_shells]
        if len(long) >= 2:
            for k in long:
                branch_of[k] = next_branch
                next_branch += 1
                per_generation[generation + 1] = per_generation.get(generation + 1, 0) + 1
                stack.append((k, generation + 1))
            for k in kids:
                if k not in long:
                    branch_of[k] = branch_of[f]
                    stack.append((k, generation))
        else:
            for k in kids:
                branch_of[k] = branch_of[f]
                stack.append((k, generation))
    keep_voxels = kept[front]
    out = np.zeros(grown.shape, dtype=bool)
    sub = np.zeros(mask.shape, dtype=bool)
    sub[tuple(c[keep_voxels] for c in coords)] = True
    out[box] = sub
    ids = np.zeros(grown.shape, dtype=np.int32)
    sub_ids = np.zeros(mask.shape, dtype=np.int32)
    sub_ids[tuple(c[keep_voxels] for c in coords)] = branch_of[front[keep_voxels]]
    ids[box] = sub_ids
    generations = max(per_generation)
    counts = tuple(per_generation.get(g, 0) for g in range(generations + 1))
    return AirwayTree(out, None, int(sum(counts)), int(generations), counts, leaks, ids)


__all__ = ["AirwayConfig", "AirwayTree", "grow_airway_tree", "empty_tree", "extend_small_airways"]
