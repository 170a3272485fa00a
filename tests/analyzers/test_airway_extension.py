"""The small-airway extension of the airway tree (:func:`neuroradix.analyzers.airway.extend_small_airways`).

Small synthetic blocks: a tree that stops, the lumen that goes on beyond it (obliquely, so it
leaves the tree through a diagonal step), emphysema behind a one-voxel wall, and a leak.
"""

from __future__ import annotations

import numpy as np

from neuroradix.analyzers.airway import AirwayConfig, extend_small_airways

PARENCHYMA, LUMEN, WALL, EMPHYSEMA = -850.0, -990.0, 40.0, -975.0


def _block(shape=(24, 24, 24)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hu = np.full(shape, PARENCHYMA, dtype=np.float32)
    tree = np.zeros(shape, dtype=bool)
    allowed = np.ones(shape, dtype=bool)
    return hu, tree, allowed


def test_an_oblique_bronchus_beyond_the_tree_is_added():
    hu, tree, allowed = _block()
    tree[12:24, 11:13, 11:13] = True  # the tree stops at z = 12
    hu[tree] = LUMEN
    beyond = np.zeros_like(tree)
    for step in range(1, 8):  # a one-voxel lumen going down and sideways: diagonal steps only
        beyond[12 - step, 12 + step, 12] = True
    hu[beyond] = -960.0
    # the corners of the diagonal steps: partial volume of lumen and wall, no wall
    for step in range(1, 8):
        hu[12 - step, 12 + step - 1, 12] = -700.0
    added = extend_small_airways(hu, tree, allowed, 0.002, AirwayConfig())
    assert np.array_equal(added & beyond, beyond)
    assert not (added & ~beyond & (hu > -875)).any()


def test_emphysema_behind_a_thin_wall_is_not_added():
    hu, tree, allowed = _block()
    tree[4:20, 10:12, 10:12] = True
    hu[tree] = LUMEN
    # a one-voxel wall on the +y and +x sides with a gap at the corner (12, 12), as a digitised
    # thin wall has: emphysema there is diagonal to the lumen voxel (11, 11), both corners walled
    hu[4:20, 12, 8:12] = WALL
    hu[4:20, 8:12, 12] = WALL
    hu[4:20, 12:17, 12:17] = EMPHYSEMA
    added = extend_small_airways(hu, tree, allowed, 0.002, AirwayConfig())
    assert not added.any()
    # the same dark block next to a face of the tree is lumen going on: it is taken (0.25 mL < 1 mL)
    hu[4:20, 12, 10:12] = LUMEN
    added = extend_small_airways(hu, tree, allowed, 0.002, AirwayConfig())
    assert added[4:20, 12, 10:12].all()


def test_a_dark_region_larger_than_a_bronchus_is_a_leak():
    hu, tree, allowed = _block((40, 40, 40))
    tree[30:40, 19:21, 19:21] = True
    hu[tree] = LUMEN
    hu[25:30, 19:21, 19:21] = -960.0  # 20 voxels of lumen beyond the tree
    hu[5:25, 5:35, 5:35] = -910.0  # then a large region below -900 HU (parenchyma at a low threshold)
    voxel_ml = 0.002  # 1 mL = 500 voxels; the region holds 18000
    added = extend_small_airways(hu, tree, allowed, voxel_ml, AirwayConfig())
    assert added[25:30, 19:21, 19:21].all()  # kept at -950 HU, before the leak
    assert not added[5:25].any()
    assert not extend_small_airways(hu, tree, allowed, voxel_ml, AirwayConfig(extension_thresholds_hu=())).any()
