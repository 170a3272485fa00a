"""CT-CLIP's image side (CTViT encoder, cosine vector quantiser, latent projection), written here.

CT-CLIP's code and weights are CC BY-NC-SA 4.0, so nothing of the authors' code is copied: this
module is an independent implementation of the published architecture, written from the paper's
description and checked against fixed-seed outputs recorded once from the authors' public code
(``tests/models/published/data/ct-clip-golden.json``).  The module and parameter *names* follow the
published state dict (``visual_transformer.*``, ``to_visual_latent.weight``, ``temperature``) so
that a downloaded ``CT-CLIP_v2.pt`` loads strictly.

What the published model does with a ``(1, 1, slices, 480, 480)`` input in -1..1:

1. cut it into 10-slice x 20 x 20 patches, LayerNorm -> Linear(4000, 512) -> LayerNorm;
2. 4 "spatial" blocks over the 24 x 24 patches of each slab (with a continuous relative position
   bias) and 4 "temporal" blocks over the slabs of each patch column; every block starts with a
   depth-wise 3x3x3 convolution (causal along the slabs) added to its input;
3. each token replaced by its nearest codebook entry by cosine similarity (8,192 entries);
4. tokens averaged over the slabs, the remaining ``24 x 24 x 512`` values flattened and projected
   to 512, then L2-normalised (the image latent).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["CTViTConfig", "CTViT", "CTCLIPImage"]


class CTViTConfig:
    """Hyper-parameters of the published CTViT (CT-CLIP's ``run_zero_shot.py``).

    Parameters
    ----------
    dim:
        Token width.
    codebook_size:
        Entries of the cosine vector quantiser.
    patch_size:
        In-plane patch edge (pixels).
    temporal_patch_size:
        Slices per patch.
    spatial_depth, temporal_depth:
        Number of spatial and temporal transformer blocks.
    heads, dim_head:
        Attention heads and their width.
    grid:
        In-plane patch grid ``(rows, columns)`` the latent projection was trained for.
    dim_latent:
        Width of the image latent.
    """

    def __init__(
        self,
        dim: int = 512,
        codebook_size: int = 8192,
        patch_size: int = 20,
        temporal_patch_size: int = 10,
        spatial_depth: int = 4,
        temporal_depth: int = 4,
        heads: int = 8,
        dim_head: int = 32,
        grid: tuple[int, int] = (24, 24),
        dim_latent: int = 512,
    ) -> None:
        for name, value in (
            ("dim", dim),
            ("codebook_size", codebook_size),
            ("patch_size", patch_size),
            ("temporal_patch_size", temporal_patch_size),
            ("spatial_depth", spatial_depth),
            ("temporal_depth", temporal_depth),
            ("heads", heads),
            ("dim_head", dim_head),
            ("dim_latent", dim_latent),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if len(grid) != 2 or min(grid) <= 0:
            raise ValueError(f"grid must be two positive ints, got {grid}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.spatial_depth = spatial_depth
        self.temporal_depth = temporal_depth
        self.heads = heads
        self.dim_head = dim_head
        self.grid = (int(grid[0]), int(grid[1]))
        self.dim_latent = dim_latent

    @property
    def dim_image(self) -> int:
        """Input width of the latent projection: the slab-averaged token grid, flattened."""
        return self.grid[0] * self.grid[1] * self.dim


class _GainNorm(nn.Module):
    """LayerNorm with a learned gain and a stored (never trained) offset, ``gamma`` / ``beta``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta: torch.Tensor = self.beta  # type: ignore[assignment]
        return F.layer_norm(x, x.shape[-1:], self.gamma, beta)


class _GatedGelu(nn.Module):
    """Second half of the features, through GELU, gates the first half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * value


def _feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    hidden = int(mult * (2 / 3) * dim)
    # indices 0..4 are the published parameter names (3 is a dropout slot, identity at inference)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, hidden * 2, bias=False),
        _GatedGelu(),
        nn.Identity(),
        nn.Linear(hidden, dim, bias=False),
    )


class _ConvPosition(nn.Module):
    """Depth-wise 3x3x3 convolution over the (slab, row, column) token grid, causal along slabs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        # The published model views the token memory as (b, t, h, w, d) whatever order the
        # sequence axis holds (in the temporal blocks it holds (b h w) t): kept as published.
        shape = x.shape
        y = x.reshape(*grid, shape[-1]).permute(0, 4, 1, 2, 3)
        y = F.pad(y, (1, 1, 1, 1, 2, 0))
        y = self.dsconv(y)
        return y.permute(0, 2, 3, 4, 1).reshape(shape)


class _CosineAttention(nn.Module):
    """Multi-head self-attention on L2-normalised queries and keys with learned per-axis scales."""

    def __init__(self, dim: int, heads: int, dim_head: int, scale: float = 8.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = scale
        self.norm = _GainNorm(dim)
        self.context_norm = _GainNorm(dim)  # published but unused in self-attention
        self.null_kv = nn.Parameter(torch.zeros(heads, 0, dim_head))  # no null key/values: empty
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # queries see the normalised tokens, keys and values the raw ones (as published)
        q = self._split(self.to_q(self.norm(x)))
        k, v = (self._split(t) for t in self.to_kv(x).chunk(2, dim=-1))
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        mask = None if bias is None else bias.to(q.dtype).unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _Blocks(nn.Module):
    """``depth`` x (conv position, attention, feed-forward), residual, then a final gain norm."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int) -> None:
        super().__init__()
        # slot 2 of each layer is the published (absent) cross-attention
        self.layers = nn.ModuleList(
            nn.ModuleList([_ConvPosition(dim), _CosineAttention(dim, heads, dim_head), None, _feed_forward(dim)])  # type: ignore[list-item]
            for _ in range(depth)
        )
        self.norm_out = _GainNorm(dim)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int, int, int], bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self.layers:
            assert isinstance(layer, nn.ModuleList)
            x = layer[0](x, grid) + x  # conv position
            x = layer[1](x, bias) + x  # attention
            x = layer[3](x) + x  # feed-forward

        return self.norm_out(x)


class _RelativePositionBias(nn.Module):
    """Per-head attention bias from signed-log in-plane offsets through a small MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.net = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1)),
                nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)),
                nn.Linear(dim, heads),
            ]
        )

    def forward(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        # The bias depends only on the offset between two patches: evaluate the MLP once per
        # distinct offset ((2 rows - 1) x (2 cols - 1) of them, not rows^2 x cols^2), then gather.
        dr = torch.arange(-(rows - 1), rows, device=device)
        dc = torch.arange(-(cols - 1), cols, device=device)
        off = torch.stack(torch.meshgrid(dr, dc, indexing="ij"), dim=-1).reshape(-1, 2).float()
        rel = torch.sign(off) * torch.log(off.abs() + 1)
        for layer in self.net:
            rel = layer(rel)
        r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
        r, c = r.reshape(-1), c.reshape(-1)
        index = (r[:, None] - r[None, :] + rows - 1) * (2 * cols - 1) + (c[:, None] - c[None, :] + cols - 1)
        return rel[index].permute(2, 0, 1)


class _Codebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, size))
        self.register_buffer("embed", torch.zeros(1, size, dim))


class _CosineQuantizer(nn.Module):
    """Replace each token by the stored codebook entry of highest cosine similarity."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self._codebook = _Codebook(size, dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embed: torch.Tensor = self._codebook.embed  # type: ignore[assignment]
        codes = embed[0].float()
        sim = F.normalize(tokens.float(), dim=-1) @ F.normalize(codes, dim=-1).t()
        index = sim.argmax(dim=-1)
        return codes[index].to(tokens.dtype), index


class CTViT(nn.Module):
    """CT-CLIP's image encoder up to the quantised token grid (published name ``visual_transformer``).

    Parameters
    ----------
    config:
        Hyper-parameters; the published ones by default.
    """

    def __init__(self, config: CTViTConfig | None = None) -> None:
        super().__init__()
        cfg = config or CTViTConfig()
        self.config = cfg
        p, pt, d = cfg.patch_size, cfg.temporal_patch_size, cfg.dim
        self.spatial_rel_pos_bias = _RelativePositionBias(d, cfg.heads)
        # index 0 is the published (parameter-free) patch rearrangement, done in ``patchify``
        self.to_patch_emb_first_frame = nn.Sequential(
            nn.Identity(), nn.LayerNorm(p * p), nn.Linear(p * p, d), nn.LayerNorm(d)
        )
        self.to_patch_emb = nn.Sequential(
            nn.Identity(), nn.LayerNorm(pt * p * p), nn.Linear(pt * p * p, d), nn.LayerNorm(d)
        )
        self.enc_spatial_transformer = _Blocks(d, cfg.spatial_depth, cfg.heads, cfg.dim_head)
        self.enc_temporal_transformer = _Blocks(d, cfg.temporal_depth, cfg.heads, cfg.dim_head)
        self.vq = _CosineQuantizer(cfg.codebook_size, d)
        # the autoencoder's decoder heads are published (unused by CT-CLIP)
        self.to_pixels_first_frame = nn.Sequential(nn.Linear(d, p * p))
        self.to_pixels = nn.Sequential(nn.Linear(d, pt * p * p))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, 1, slices, rows, cols)`` -> patch vectors ``(b, t, h, w, 10*20*20)``."""
        cfg = self.config
        b, c, s, r, k = x.shape
        p, pt = cfg.patch_size, cfg.temporal_patch_size
        if s % pt or r % p or k % p:
            raise ValueError(f"input {tuple(x.shape)} is not a whole number of {pt}x{p}x{p} patches")
        x = x.reshape(b, c, s // pt, pt, r // p, p, k // p, p)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, s // pt, r // p, k // p, c * pt * p * p)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous token grid ``(b, t, h, w, dim)`` before quantisation."""
        tokens = self.to_patch_emb[1:](self.patchify(x))
        b, t, h, w, d = tokens.shape
        grid = (b, t, h, w)
        bias = self.spatial_rel_pos_bias(h, w, tokens.device)
        tokens = self.enc_spatial_transformer(tokens.reshape(b * t, h * w, d), grid, bias)
        tokens = tokens.reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        tokens = self.enc_temporal_transformer(tokens, grid)
        return tokens.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantised tokens ``(b, t, h, w, dim)`` and their codebook indices ``(b, t, h, w)``."""
        tokens = self.encode(x)
        b, t, h, w, d = tokens.shape
        quantised, index = self.vq(tokens.reshape(b, t * h * w, d))
        return quantised.reshape(b, t, h, w, d), index.reshape(b, t, h, w)


class CTCLIPImage(nn.Module):
    """The image half of CT-CLIP: CTViT, slab-mean, flatten, project, L2-normalise.

    Parameters
    ----------
    config:
        Hyper-parameters; the published ones by default.
    """

    def __init__(self, config: CTViTConfig | None = None) -> None:
        super().__init__()
        cfg = config or CTViTConfig()
        self.config = cfg
        self.visual_transformer = CTViT(cfg)
        self.to_visual_latent = nn.Linear(cfg.dim_image, cfg.dim_latent, bias=False)
        self.temperature = nn.Parameter(torch.tensor(1.0))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image latent ``(b, dim_latent)`` (L2-normalised) and the codebook indices."""
        tokens, index = self.visual_transformer(x)
        pooled = tokens.mean(dim=1)
        if pooled.shape[1:3] != self.config.grid:
            raise ValueError(
                f"in-plane patch grid {tuple(pooled.shape[1:3])} differs from the {self.config.grid} the "
                "latent projection expects (the published model needs 480 x 480 pixels in-plane)"
            )
        latent = self.to_visual_latent(pooled.reshape(pooled.shape[0], -1))
        return F.normalize(latent, dim=-1), index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image latent ``(b, dim_latent)``, L2-normalised."""
        return self.features(x)[0]

    def logit_scale(self) -> float:
        """``exp(temperature)``: the factor on latent dot products (the zero-shot logits)."""
        return float(math.exp(float(self.temperature.detach())))
