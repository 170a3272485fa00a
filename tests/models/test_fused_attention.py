"""Fused window attention (SDPA) against MONAI's, the release layout, sw_batch choice and compile cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config
from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

from neuroradix.models.attention import FusedWindowAttention, count_fused_attention, set_fused_attention
from neuroradix.models.backbone import build_backbone, forward_with_features
from neuroradix.models.config import BackboneConfig
from neuroradix.models.sliding import SlidingOptions, sliding_segment
from neuroradix.models.speed import (
    GIB,
    choose_sw_batch,
    probe_window_bytes,
    set_compile_cache,
    sliding_fixed_bytes,
)

TINY = BackboneConfig(feature_size=12)


def _strong_bias(model: torch.nn.Module, seed: int = 0) -> None:
    """Relative-position biases of order 1 (MONAI initialises them at std 0.02, almost invisible)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WindowAttention | FusedWindowAttention):
                m.relative_position_bias_table.copy_(torch.randn(m.relative_position_bias_table.shape, generator=g))


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    ref = build_backbone(TINY, fused_attention=False).eval()
    _strong_bias(ref, seed)
    fused = build_backbone(TINY, fused_attention=True).eval()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def test_fused_backbone_keeps_monais_state_dict_and_loads_a_plain_release():
    ref, fused = _pair()
    assert count_fused_attention(fused) == 8 and count_fused_attention(ref) == 0
    assert not any(type(m) is WindowAttention for m in fused.modules())
    assert list(fused.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert fused.state_dict()[key].shape == value.shape
        assert torch.equal(fused.state_dict()[key], value), key
    # the swap shares parameters and is reversible
    table = fused.swinViT.layers1[0].blocks[0].attn.relative_position_bias_table
    assert set_fused_attention(fused, False) == 8
    assert type(fused.swinViT.layers1[0].blocks[0].attn) is WindowAttention
    assert fused.swinViT.layers1[0].blocks[0].attn.relative_position_bias_table is table
    assert list(fused.state_dict()) == list(ref.state_dict())


def test_one_window_attention_matches_monai_with_shift_mask_forward_and_backward():
    torch.manual_seed(1)
    ws, dim, heads, groups = (4, 4, 4), 24, 3, 2
    ref = WindowAttention(dim, heads, ws, qkv_bias=True)
    with torch.no_grad():
        ref.relative_position_bias_table.normal_()
    fused = FusedWindowAttention(ref)
    mask = compute_mask([8, 8, 8], ws, (2, 2, 2), "cpu")  # 8 windows, values 0 / -100
    assert mask.shape == (8, 64, 64) and mask.min() < -1
    x = torch.randn(groups * 8, 64, dim, requires_grad=True)
    for m in (mask, None):
        out_ref = ref(x, m)
        grads_ref = torch.autograd.grad(out_ref.square().sum(), [x, ref.relative_position_bias_table, ref.qkv.weight])
        out = fused(x, m)
        grads = torch.autograd.grad(out.square().sum(), [x, fused.relative_position_bias_table, fused.qkv.weight])
        torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-4)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)
    # the mask is really used: without it the shifted-window output differs
    assert (fused(x, mask) - fused(x, None)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="multiple"):
        fused(x[:5], mask)


def test_fused_swinunetr_matches_monai_in_fp32():
    ref, fused = _pair(2)
    x = torch.rand(1, 2, 64, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits_ref, feats_ref = forward_with_features(ref, x)
        logits, feats = forward_with_features(fused, x)
    torch.testing.assert_close(logits, logits_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats, feats_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_fused_swin_encoder_matches_monai_in_bf16():
    """bf16 on the transformer encoder, where the attention is (bf16 3D convolutions are very slow
    on a CPU, and the convolutions are the same modules on both paths)."""
    ref, fused = _pair(2)
    x = torch.rand(1, 2, 64, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hid_ref = ref.swinViT(x, ref.normalize)[-1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf_ref = ref.swinViT(x, ref.normalize)[-1].float()
            bf = fused.swinViT(x, fused.normalize)[-1].float()
    err_monai = (bf_ref - hid_ref).abs().max().item()
    err_fused = (bf - hid_ref).abs().max().item()
    scale = hid_ref.abs().max().item()
    # bf16 has 8 bits of mantissa: both paths stay within a few percent of fp32, and the fused
    # path is no worse than MONAI's own bf16 path
    assert err_fused < 0.05 * scale, (err_fused, scale)
    assert err_fused <= 2 * err_monai + 1e-3, (err_fused, err_monai)


@pytest.mark.slow
def test_sliding_window_labels_agree_with_the_reference_path():
    ref, fused = _pair(4)
    rng = np.random.default_rng(5)
    image = torch.from_numpy(rng.random((72, 80, 64), dtype=np.float32))
    image = torch.nn.functional.avg_pool3d(image[None, None], 5, stride=1, padding=2)[0, 0]  # smooth structures
    kwargs = {"roi": 64, "overlap": 0.25, "sigma_scale": 0.125, "options": SlidingOptions(sw_batch_size=4)}
    a = sliding_segment(image, lambda x: forward_with_features(ref, x), **kwargs)
    b = sliding_segment(image, lambda x: forward_with_features(fused, x), **kwargs)
    assert len(a.grid) == 4 and a.labels.shape == (72, 80, 64)
    assert len(np.unique(a.labels)) > 3  # a label map with structure, not one class everywhere
    agree = float((a.labels == b.labels).mean())
    assert agree >= 0.999, agree
    torch.testing.assert_close(b.embeddings, a.embeddings, atol=1e-4, rtol=1e-4)


def test_choose_sw_batch_keeps_the_estimated_peak_within_the_budget():
    per_window, fixed = int(1.1 * GIB), int(2.9 * GIB)
    batch = choose_sw_batch("cuda", per_window_bytes=per_window, fixed_bytes=fixed)
    assert batch == 4  # (8 - 2.9) / 1.1 = 4.6
    assert fixed + batch * per_window <= 8 * GIB < fixed + (batch + 1) * per_window
    assert choose_sw_batch("cuda", per_window_bytes=per_window, fixed_bytes=fixed, budget_bytes=40 * GIB) == 32
    assert (
        choose_sw_batch("cuda", per_window_bytes=per_window, fixed_bytes=fixed, budget_bytes=40 * GIB, max_batch=64)
        == 33
    )
    assert choose_sw_batch("cuda", per_window_bytes=9 * GIB) == 1  # over budget: still runs, one window
    assert choose_sw_batch("cpu", per_window_bytes=per_window, configured=3) == 3
    assert choose_sw_batch("cuda", per_window_bytes=None, configured=6) == 6
    with pytest.raises(ValueError, match="configured"):
        choose_sw_batch("cpu", configured=0)
    with pytest.raises(ValueError, match="per_window_bytes"):
        choose_sw_batch("cuda", per_window_bytes=0)
    with pytest.raises(ValueError, match="CUDA"):
        probe_window_bytes(lambda x: (x, x), 32, device="cpu")


def test_sliding_fixed_bytes_counts_the_blending_slab():
    # 512^3, 44 classes, fp16 slab: [44, 96, 512, 512] * 2 bytes = 2.06 GiB, plus 7 bytes a voxel
    got = sliding_fixed_bytes((512, 512, 512), 96, 44)
    assert got == 44 * 96 * 512 * 512 * 2 + 512**3 * 7 + 96**3 * 4
    assert sliding_fixed_bytes((40, 40, 40), 96, 2) == sliding_fixed_bytes((96, 96, 96), 96, 2)  # padded to roi


@pytest.mark.slow
def test_compiled_fused_attention_smoke_uses_the_persistent_cache(tmp_path):
    """Quick CPU smoke of torch.compile on one attention module with a cache dir (the full backbone
    takes minutes to compile on this 2-core CPU; scripts/gpu_check.py compiles it on a GPU)."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR"), inductor_config.fx_graph_cache
    try:
        cache = set_compile_cache(tmp_path / "inductor")
        torch.manual_seed(6)
        attn = FusedWindowAttention(WindowAttention(24, 3, (4, 4, 4), qkv_bias=True)).eval()
        x = torch.randn(8, 64, 24)
        compiled = torch.compile(attn)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, None), attn(x, None), atol=1e-5, rtol=1e-4)
        assert any(p.is_file() for p in cache.rglob("*")), "no compiled artefacts in the cache dir"
    finally:
        if old[0] is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old[0]
        inductor_config.fx_graph_cache = old[1]
        torch._dynamo.reset()
