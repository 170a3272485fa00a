"""Mixture-of-experts classifier over the cls tokens (18 CT-RATE findings + abnormal)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MoEClassifier"]


class MoEClassifier(nn.Module):
    """``num_experts`` experts (Linear + GELU + LayerNorm) with softmax gating.

    Each expert maps every cls token to a representation and scores output ``q`` from token
    ``q``; the gate (softmax of a linear map of the mean cls token) weights the experts' logits.

    ``forward(cls_repr [B, Q, d]) -> (logits [B, Q], gates [B, num_experts])``.
    """

    def __init__(self, d_model: int, num_outputs: int, num_experts: int = 4) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.num_outputs = num_outputs
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.LayerNorm(d_model)) for _ in range(num_experts)
        )
        self.weight = nn.Parameter(torch.randn(num_experts, num_outputs, d_model) * d_model**-0.5)
        self.bias = nn.Parameter(torch.zeros(num_experts, num_outputs))
        self.gate = nn.Linear(d_model, num_experts)

    def forward(self, cls_repr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if cls_repr.shape[1] != self.num_outputs:
            raise ValueError(f"expected {self.num_outputs} cls tokens, got {cls_repr.shape[1]}")
        gates = torch.softmax(self.gate(cls_repr.mean(dim=1)), dim=-1)  # [B, E]
        hidden = torch.stack([e(cls_repr) for e in self.experts], dim=1)  # [B, E, Q, d]
        expert_logits = (hidden * self.weight).sum(-1) + self.bias  # [B, E, Q]
        return (gates.unsqueeze(-1) * expert_logits).sum(dim=1), gates
