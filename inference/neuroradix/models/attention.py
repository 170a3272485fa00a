"""Window attention of MONAI's ``SwinUNETR`` through ``scaled_dot_product_attention``.

MONAI's :class:`~monai.networks.nets.swin_unetr.WindowAttention` computes ``softmax(q k^T * s +
bias + mask) v`` with explicit matrices (an fp32 softmax under autocast, several element-wise
passes).  :class:`FusedWindowAttention` computes the same thing with one call of
:func:`torch.nn.functional.scaled_dot_product_attention`: the relative-position bias ``[h, n, n]``
and, for shifted windows, the shift mask ``[nw, n, n]`` are folded into one additive
``attn_mask [1, nw*h, n, n]`` that broadcasts over the batch (MONAI's own
``use_flash_attention`` expands it to ``[B*nw, h, n, n]``; at 96^3 and sw_batch 4 that is ~1 GB
in bf16).  Unlike MONAI's option it also runs with autograd on, so training uses it too.

The swap keeps MONAI's ``SwinUNETR`` as the model and its weights layout: the fused module holds
the very same parameters and buffers under the same names (``relative_position_bias_table``,
``relative_position_index``, ``qkv``, ``proj``), so a state dict saved from the plain model loads
unchanged, and :func:`set_fused_attention` swaps in either direction.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["FusedWindowAttention", "set_fused_attention", "count_fused_attention"]


class FusedWindowAttention(nn.Module):
    """Drop-in replacement of MONAI's ``WindowAttention`` sharing its parameters.

    Parameters
    ----------
    src:
        The MONAI module to replace; its parameters and buffers are taken over (not copied).
    """

    relative_position_index: torch.Tensor

    def __init__(self, src: WindowAttention) -> None:
        super().__init__()
        if not isinstance(src, WindowAttention):
            raise TypeError(f"src must be a MONAI WindowAttention, got {type(src).__name__}")
        self.dim = src.dim
        self.window_size = src.window_size
        self.num_heads = src.num_heads
        self.scale = src.scale
        # same names, same registration order as MONAI's module: identical state_dict keys
        self.relative_position_bias_table = src.relative_position_bias_table
        index = src.relative_position_index
        if not isinstance(index, torch.Tensor):
            raise TypeError("src.relative_position_index must be a tensor buffer")
        self.register_buffer("relative_position_index", index)
        self.qkv = src.qkv
        self.attn_drop = src.attn_drop
        self.proj = src.proj
        self.proj_drop = src.proj_drop

    def _bias(self, n: int) -> torch.Tensor:
        """Relative-position bias ``[h, n, n]`` (MONAI crops the index to ``n`` the same way)."""
        index = self.relative_position_index[:n, :n].reshape(-1)
        return self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x [B*nw, n, c]`` windows of tokens; ``mask [nw, n, n]`` (shifted windows) or ``None``."""
        b, n, c = x.shape
        h = self.num_heads
        d = c // h
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # each [b, h, n, d]
        bias = self._bias(n)
        if mask is None:
            groups, attn_mask = b, bias.unsqueeze(0)  # [1, h, n, n]
        else:
            nw = mask.shape[0]
            if b % nw:
                raise ValueError(f"{b} windows are not a multiple of the mask's {nw} windows")
            groups = b // nw
            attn_mask = (bias.unsqueeze(0) + mask.to(bias.dtype).unsqueeze(1)).reshape(1, nw * h, n, n)
        q, k, v = (t.reshape(groups, -1, n, d) for t in (q, k, v))  # windows of one sample side by side
        drop = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=drop, scale=self.scale)
        out = out.reshape(b, h, n, d).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))

    def to_monai(self) -> WindowAttention:
        """A MONAI ``WindowAttention`` holding this module's parameters (the eager reference)."""
        ref = WindowAttention(
            self.dim,
            self.num_heads,
            self.window_size,
            qkv_bias=self.qkv.bias is not None,
            attn_drop=self.attn_drop.p,
            proj_drop=self.proj_drop.p,
        )
        ref.relative_position_bias_table = self.relative_position_bias_table
        ref.relative_position_index = self.relative_position_index
        ref.qkv, ref.attn_drop, ref.proj, ref.proj_drop = self.qkv, self.attn_drop, self.proj, self.proj_drop
        ref.train(self.training)
        return ref


def set_fused_attention(model: nn.Module, enabled: bool = True) -> int:
    """Swap every window attention of ``model`` to the fused module (or back to MONAI's).

    Parameters
    ----------
    model:
        A MONAI ``SwinUNETR`` (or anything containing its window attention modules).
    enabled:
        ``True``: MONAI ``WindowAttention`` -> :class:`FusedWindowAttention`; ``False``: back.

    Returns
    -------
    int
        How many modules were swapped.  Parameters are shared, never copied, so the model's
        ``state_dict`` keys and values are the same before and after.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if enabled and type(child) is WindowAttention:
                setattr(parent, name, FusedWindowAttention(child))
                swapped += 1
            elif not enabled and isinstance(child, FusedWindowAttention):
                setattr(parent, name, child.to_monai())
                swapped += 1
    logger.debug("window attention: %d module(s) swapped to %s", swapped, "fused" if enabled else "MONAI")
    return swapped


def count_fused_attention(model: nn.Module) -> int:
    """Number of :class:`FusedWindowAttention` modules in ``model``."""
    return sum(isinstance(m, FusedWindowAttention) for m in model.modules())
