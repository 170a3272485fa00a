"""Cross-attention bridge from patch embeddings to the head's query tokens.

Two streams read the patches: learnable classification queries (one per output, so each
finding's attention over patches is its own query's) and generation queries (BART's encoder
states).  Each stream: multi-head cross-attention + LayerNorm + Dropout, then a 2-layer
Transformer encoder; the classification stream ends with a graph-attention layer among the
cls tokens (:class:`SimpleGATLayer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

__all__ = ["SimpleGATLayer", "CrossAttentionBridge", "BridgeOutput"]


class SimpleGATLayer(nn.Module):
    """Multi-head graph attention (Velickovic et al. 2018) over a fully connected token graph.

    ``x [B, Q, d] -> [B, Q, d]`` with a residual connection and LayerNorm.
    """

    def __init__(self, d_model: int, num_heads: int = 4, dropout: float = 0.1, negative_slope: float = 0.2) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.lin = nn.Linear(d_model, d_model, bias=False)
        self.att_src = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.att_dst = nn.Parameter(torch.empty(num_heads, self.head_dim))
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        self.leaky = nn.LeakyReLU(negative_slope)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, adjacency: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, q, d = x.shape
        h = self.lin(x).view(b, q, self.num_heads, self.head_dim)
        e_src = (h * self.att_src).sum(-1)  # [B, Q, H]
        e_dst = (h * self.att_dst).sum(-1)
        e = self.leaky(e_dst.unsqueeze(2) + e_src.unsqueeze(1))  # [B, Qi, Qj, H]
        if adjacency is not None:
            e = e.masked_fill(~adjacency.bool()[None, :, :, None], float("-inf"))
        alpha = self.drop(torch.softmax(e, dim=2))
        agg = torch.einsum("bijh,bjhd->bihd", alpha, h).reshape(b, q, d)
        return self.norm(x + self.drop(self.out(nn.functional.elu(agg))))


@dataclass
class BridgeOutput:
    cls_repr: torch.Tensor  # [B, Qc, d]
    gen_repr: torch.Tensor  # [B, Qg, d]
    cls_attention: torch.Tensor  # [B, Qc, N], heads averaged, rows sum to 1
    gen_attention: torch.Tensor  # [B, Qg, N]


class _Stream(nn.Module):
    def __init__(self, num_queries: int, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, d_model) * 0.02)
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, 4 * d_model, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, memory: torch.Tensor, key_padding_mask: Optional[torch.Tensor]):
        q = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        out, weights = self.attn(
            q, memory, memory, key_padding_mask=key_padding_mask, need_weights=True, average_attn_weights=True
        )
        x = self.norm(q + self.drop(out))
        return self.encoder(x), weights


class CrossAttentionBridge(nn.Module):
    """Project patch embeddings (``embed_dim``) to ``d_model`` and read them with two query streams."""

    embed_mean: torch.Tensor  # buffers, present when ``standardize``
    embed_std: torch.Tensor

    def __init__(
        self,
        embed_dim: int,
        d_model: int,
        num_cls_queries: int,
        num_gen_queries: int,
        num_heads: int = 8,
        dropout: float = 0.1,
        gat_heads: int = 4,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if standardize:  # per-feature mean and std of the training embeddings (set by stage 3, saved with the weights)
            self.register_buffer("embed_mean", torch.zeros(embed_dim))
            self.register_buffer("embed_std", torch.ones(embed_dim))
        self.standardize = standardize
        self.proj = nn.Sequential(nn.Linear(embed_dim, d_model), nn.LayerNorm(d_model))
        self.pos = nn.Linear(3, d_model)
        self.cls_stream = _Stream(num_cls_queries, d_model, num_heads, dropout)
        self.gen_stream = _Stream(num_gen_queries, d_model, num_heads, dropout)
        self.gat = SimpleGATLayer(d_model, gat_heads, dropout)

    @property
    def cls_queries(self) -> nn.Parameter:
        return self.cls_stream.queries

    @property
    def gen_queries(self) -> nn.Parameter:
        return self.gen_stream.queries

    def forward(
        self,
        embeddings: torch.Tensor,
        positions: Optional[torch.Tensor] = None,
        patch_mask: Optional[torch.Tensor] = None,
    ) -> BridgeOutput:
        """``embeddings [B, N, E]``, ``positions [B, N, 3]`` (0..1) and ``patch_mask [B, N]`` (True = real)."""
        if embeddings.ndim != 3:
            raise ValueError(f"embeddings must be [B, N, E], got {tuple(embeddings.shape)}")
        if self.standardize:
            embeddings = (embeddings - self.embed_mean.to(embeddings.dtype)) / self.embed_std.to(embeddings.dtype)
        memory = self.proj(embeddings)
        if positions is not None:
            memory = memory + self.pos(positions.to(memory.dtype))
        kpm = None if patch_mask is None else ~patch_mask.bool()
        cls_x, cls_w = self.cls_stream(memory, kpm)
        gen_x, gen_w = self.gen_stream(memory, kpm)
        return BridgeOutput(self.gat(cls_x), gen_x, cls_w, gen_w)
