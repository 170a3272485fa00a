"""The 3D ViT encoder: the interface's shapes, its preprocessing geometry, positions and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroradix.models.encoders import ENCODERS, EncoderOutput, build_encoder
from neuroradix.models.encoders.vit import ViTConfig, ViTEncoder, center_crop_or_pad

TINY = {
    "input_shape": [16, 24, 32],
    "target_spacing": [4.0, 4.0, 4.0],
    "patch_size": [8, 8, 8],
    "width": 32,
    "depth": 2,
    "heads": 4,
    "mlp_ratio": 2.0,
}


def test_registered_and_built_from_plain_keys():
    assert "vit" in ENCODERS
    enc = build_encoder("vit", **TINY)
    assert isinstance(enc, ViTEncoder) and enc.name == "vit" and enc.width == 32
    assert enc.config.grid == (2, 3, 4)
    assert ViTConfig.from_dict(enc.config.to_dict()) == enc.config


def test_forward_gives_tokens_grid_positions_and_cls():
    torch.manual_seed(0)
    enc = build_encoder("vit", **TINY).eval()
    out = enc(torch.randn(2, 1, 16, 24, 32))
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (2, 24, 32) and out.grid == (2, 3, 4)
    assert out.global_vector.shape == (2, 32)
    # token centres in input voxels: patch i of 8 voxels covers [8i, 8i+8), centre 8i + 3.5
    assert torch.allclose(out.positions[0], torch.tensor([3.5, 3.5, 3.5]))
    assert torch.allclose(out.positions[-1], torch.tensor([11.5, 19.5, 27.5]))
    # tokens follow C order over the grid: token 1 is the next patch along x
    assert torch.allclose(out.positions[1], torch.tensor([3.5, 3.5, 11.5]))


def test_tokens_depend_on_their_patch_and_position():
    """Learned positions make two identical patches at different places give different tokens."""
    torch.manual_seed(0)
    enc = build_encoder("vit", **{**TINY, "depth": 1}).eval()
    out = enc(torch.zeros(1, 1, 16, 24, 32))
    assert not torch.allclose(out.tokens[0, 0], out.tokens[0, 1], atol=1e-4)


def test_other_grid_interpolates_the_positions():
    enc = build_encoder("vit", **TINY).eval()
    out = enc(torch.randn(1, 1, 24, 24, 24))
    assert out.grid == (3, 3, 3) and out.tokens.shape == (1, 27, 32)


def test_preprocess_resamples_windows_and_crops_to_the_input_shape():
    enc = build_encoder("vit", **TINY)
    # 20 x 30 x 40 voxels at 2 mm -> 10 x 15 x 20 at 4 mm -> padded to 16 x 24 x 32
    vol = np.full((20, 30, 40), 40.0, dtype=np.float32)
    vol[:, :, :20] = -2000.0  # below the window: clipped to -1000 HU -> -1
    x = enc.preprocess(vol, (2.0, 2.0, 2.0))
    assert x.shape == (1, 1, 16, 24, 32) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and abs(float(x.max()) - 0.04) < 1e-5  # 40 HU -> 0.04
    # the scan sits in the middle: 3 voxels of padding (air, -1) before it along z
    assert float(x[0, 0, :3].max()) == -1.0 and abs(float(x[0, 0, 3, 12, 31 - 6]) - 0.04) < 1e-5
    # a larger scan is centre-cropped
    big = enc.preprocess(np.zeros((80, 80, 80), np.float32), (1.0, 1.0, 1.0))
    assert big.shape == (1, 1, 16, 24, 32)


def test_center_crop_or_pad_places_the_content_symmetrically():
    t = torch.arange(5.0).reshape(1, 1, 5, 1, 1).expand(1, 1, 5, 1, 1)
    padded = center_crop_or_pad(t, (8, 1, 1), value=-1.0)
    assert padded[0, 0, :, 0, 0].tolist() == [-1, 0, 1, 2, 3, 4, -1, -1]
    cropped = center_crop_or_pad(t, (3, 1, 1), value=-1.0)
    assert cropped[0, 0, :, 0, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "bad",
    [
        {"input_shape": [15, 24, 32]},  # not a multiple of the patch
        {"width": 30},  # not divisible by heads
        {"hu_window": [100, -100]},
        {"unknown_key": 1},
    ],
)
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        build_encoder("vit", **{**TINY, **bad})


def test_gradients_reach_every_parameter():
    enc = build_encoder("vit", **TINY)
    out = enc(torch.randn(2, 1, 16, 24, 32))
    (out.tokens.mean() + out.global_vector.mean()).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_patch_embedding_equals_the_convolution():
    """The matrix-product patch embedding gives what the ``Conv3d`` it keeps the weights of gives."""
    torch.manual_seed(0)
    enc = build_encoder("vit", **TINY)
    x = torch.randn(2, 1, 17, 25, 33)  # a remainder on every axis is dropped, as the convolution does
    tokens, grid = enc._embed_patches(x)
    conv = enc.patch_embed(x).flatten(2).transpose(1, 2)
    assert grid == (2, 3, 4) and torch.allclose(tokens, conv, atol=1e-5)


def test_preprocess_volume_maps_input_voxels_back_to_the_patient():
    """A bright voxel of the source lands where the input affine says its patient position is."""
    enc = build_encoder("vit", **TINY)
    vol = np.full((20, 30, 40), -1000.0, dtype=np.float32)
    vol[10:12, 14:16, 30:32] = 1000.0
    src = np.eye(4)
    src[:3, :3] = np.array([[0, 0, 2.0], [0, 2.0, 0], [2.0, 0, 0]])  # slices +S, rows +P, columns +L, 2 mm
    src[:3, 3] = [-40.0, -30.0, 100.0]
    x, aff = enc.preprocess_volume(vol, src)
    assert torch.equal(x, enc.preprocess(vol, (2.0, 2.0, 2.0)))
    k = np.unravel_index(int(torch.argmax(x[0, 0])), x.shape[2:])
    lps_input = aff @ np.array([*k, 1.0])
    lps_source = src @ np.array([10.5, 14.5, 30.5, 1.0])  # the centre of the bright block
    assert np.abs(lps_input[:3] - lps_source[:3]).max() <= 2.0 + 1e-6  # within one 4 mm voxel's half-width
    assert np.allclose(np.linalg.norm(aff[:3, :3], axis=0), [4.0, 4.0, 4.0])
