"""Preprocessing geometry, global-channel transforms, sliding-window stitching and attention geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroradix.models.config import PreprocessConfig
from neuroradix.models.embeddings import load_embeddings, save_embeddings
from neuroradix.models.sliding import PatchGrid, SlidingOptions, sliding_segment, window_starts
from neuroradix.models.transforms import (
    AddGlobalResized,
    AddGlobalResizedd,
    AppendGlobalChanneld,
    LoadEmbeddingD,
    RemapLabelsD,
    preprocess_volume,
)
from neuroradix.types import Volume

# Source axes: slices step towards Inferior (-z) by 2 mm, rows towards Posterior (+y) by 1.5 mm,
# columns towards the patient's Right (-x) by 1 mm: a non-identity orientation.
OBLIQUE = np.array([[0.0, 0.0, -1.0, 50.0], [0.0, 1.5, 0.0, -30.0], [-2.0, 0.0, 0.0, 80.0], [0.0, 0.0, 0.0, 1.0]])


def _volume(shape, affine=OBLIQUE):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    vol = Volume(np.zeros(shape, np.int16), affine)
    pts = vol.index_to_patient(idx)
    hu = (pts[..., 0] * 3 - pts[..., 1] * 2 + pts[..., 2]).astype(np.float32)  # a function of position
    return Volume(hu, affine), pts


def test_preprocess_reorients_to_spl_and_keeps_patient_positions():
    vol, _pts = _volume((20, 16, 24))
    cfg = PreprocessConfig(
        hu_window=(-1e4, 1e4), output_range=(-1e4, 1e4), target_spacing=(2.0, 1.5, 1.0), patch_size=64, global_size=64
    )
    net = preprocess_volume(vol, cfg)
    assert net.shape == (20, 16, 24)
    dirs = net.affine[:3, :3] / np.linalg.norm(net.affine[:3, :3], axis=0)
    assert np.allclose(dirs, [[0, 0, 1], [0, 1, 0], [1, 0, 0]])  # slices -> S, rows -> P, columns -> L
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in net.shape], indexing="ij"), axis=-1)
    p = idx @ net.affine[:3, :3].T + net.affine[:3, 3]
    assert np.allclose(net.array, p[..., 0] * 3 - p[..., 1] * 2 + p[..., 2], atol=1e-2)


def test_resampled_labels_go_back_to_the_right_source_voxels():
    vol, pts = _volume((30, 20, 40))
    cfg = PreprocessConfig(target_spacing=(4.0, 3.0, 4.0), patch_size=64, global_size=64)
    net = preprocess_volume(vol, cfg)
    assert net.shape == (15, 10, 10)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in net.shape], indexing="ij"), axis=-1)
    centres = idx @ net.affine[:3, :3].T + net.affine[:3, 3]
    labels = (centres[..., 0] > 30).astype(np.uint8) + 2 * (centres[..., 2] > 50).astype(np.uint8)
    back = net.labels_to_source(labels)
    assert back.shape == vol.shape
    expected = (pts[..., 0] > 30).astype(np.uint8) + 2 * (pts[..., 2] > 50).astype(np.uint8)
    # nearest neighbour: only voxels within half a network voxel of a boundary may differ
    near = (np.abs(pts[..., 0] - 30) < 2.0) | (np.abs(pts[..., 2] - 50) < 2.0)
    assert np.array_equal(back[~near], expected[~near])
    assert back[~near].min() == 0 and back[~near].max() == 3


def test_global_channel_transforms():
    img = torch.rand(1, 40, 50, 60)
    g = AddGlobalResized(16)(img)
    assert g.shape == (1, 16, 16, 16)
    d = AddGlobalResizedd("image", size=16)({"image": img})
    d["image"] = d["image"][:, :16, :16, :16]  # a crop of the image, as training does
    out = AppendGlobalChanneld("image")(d)
    assert out["image"].shape == (2, 16, 16, 16) and "global" not in out
    assert torch.equal(out["image"][1], g[0])


def test_remap_and_embedding_dictionary_transforms(tmp_path):
    lab = np.array([[[0, 1, 51, 92]]], dtype=np.int16)  # background, spleen, heart, rib_left_1
    assert RemapLabelsD("label")({"label": lab})["label"].ravel().tolist() == [0, 39, 8, 26]
    grid = PatchGrid(((0, 10), (0,), (0, 5, 9)), 64, (74, 40, 73), np.eye(4))
    emb = torch.randn(len(grid), 12)
    save_embeddings(tmp_path / "scan.pt", emb, grid, {"scan": "x"})
    d = LoadEmbeddingD("emb")({"emb": tmp_path / "scan.pt"})
    assert torch.equal(d["emb"], emb) and d["emb_positions"].shape == (6, 3)
    g2 = load_embeddings(tmp_path / "scan.pt").grid
    assert g2.starts == grid.starts and g2.shape == grid.shape


def test_window_starts_cover_the_axis():
    assert window_starts(50, 64, 0.25).tolist() == [0]
    s = window_starts(200, 64, 0.25)
    assert s[0] == 0 and s[-1] == 200 - 64 and np.all(np.diff(s) <= 48)


NCLS = 44


def _position_model(seen_globals):
    """A fake backbone: class = round(intensity * 43); features = window mean."""

    def forward(x):
        seen_globals.append(x[:, 1].clone())
        c = torch.arange(NCLS, dtype=torch.float32).view(1, NCLS, 1, 1, 1)
        logits = -(((x[:, :1].float() * (NCLS - 1)) - c) ** 2)
        return logits, x[:, 0].float().mean(dim=(1, 2, 3))[:, None]

    return forward


@pytest.mark.parametrize("acc", [torch.float32, torch.float16])
def test_sliding_window_places_every_window_where_it_belongs(acc):
    shape = (150, 70, 100)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    truth = (i * 7 + j * 3 + k) % NCLS
    image = (truth / (NCLS - 1)).astype(np.float32)
    seen = []
    res = sliding_segment(
        image,
        _position_model(seen),
        roi=64,
        overlap=0.25,
        sigma_scale=0.125,
        options=SlidingOptions(sw_batch_size=3, accumulate_dtype=acc),
    )
    assert res.labels.shape == shape and res.labels.dtype == np.uint8
    assert np.array_equal(res.labels, truth)
    starts = res.grid.patch_starts()
    assert len(res.grid) == res.embeddings.shape[0] == 3 * 2 * 2
    expected = [image[a : a + 64, b : b + 64, c : c + 64].mean() for a, b, c in starts]
    assert np.allclose(res.embeddings[:, 0].numpy(), expected, atol=1e-5)
    glob = torch.nn.functional.interpolate(
        torch.from_numpy(image)[None, None], size=(64,) * 3, mode="trilinear", align_corners=False
    )[0, 0]
    assert all(torch.allclose(g, glob.expand_as(g)) for g in seen)


def test_small_volume_is_padded_and_cropped_back():
    image = np.full((20, 30, 10), 5 / 43, np.float32)
    res = sliding_segment(image, _position_model([]), roi=64, overlap=0.5, sigma_scale=0.125)
    assert res.labels.shape == (20, 30, 10) and np.all(res.labels == 5) and len(res.grid) == 1


def test_patch_attention_lands_on_the_right_source_voxels():
    """All attention on patch (0, 0, 0) of the SPL network grid must light up the most inferior,
    most right-sided corner of the source volume, whose slices run towards inferior and whose
    columns run towards the right."""
    vol, pts = _volume((100, 80, 90))
    cfg = PreprocessConfig(target_spacing=(2.0, 1.5, 1.0), patch_size=64, global_size=64, overlap=0.5)
    net = preprocess_volume(vol, cfg)
    res = sliding_segment(net.array, _position_model([]), 64, cfg.overlap, cfg.sigma_scale, net.affine)
    grid = res.grid
    assert grid.counts == (3, 2, 2)
    weights = np.zeros(len(grid))
    weights[0] = 1.0
    amap = grid.stitch(weights, vol.shape, vol.affine)
    expected = np.zeros(vol.shape, bool)
    expected[100 - 64 :, :64, 90 - 64 :] = True  # source slices/columns run opposite to S/L
    assert np.array_equal(amap > 0, expected)
    # the patch's own centre in patient coordinates is where the lit voxels are centred
    assert np.allclose(pts[amap > 0].mean(axis=0), grid.centres_lps()[0], atol=1e-6)
    # the last patch sits at the opposite corner
    weights[:] = 0
    weights[-1] = 1.0
    amap = grid.stitch(weights, vol.shape, vol.affine)
    lit = np.argwhere(amap > 0)
    assert lit.min(axis=0).tolist() == [0, 80 - 64, 0] and lit.max(axis=0).tolist() == [63, 79, 63]
