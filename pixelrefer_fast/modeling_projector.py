"""The `mlp<N>x_gelu` projector from vision channels C to the LLM hidden size D (docs/spec.md §5.1).

`readout = Linear(C, D) -> GELU(erf) -> Linear(D, D) [-> GELU -> Linear(D, D) ...]` with N Linear layers;
the released checkpoints use `mlp2x_gelu` (keys `model.mm_projector.readout.{0,2}.{weight,bias}`).
Only the full model's global image tokens go through it; Lite never builds it.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_pixelrefer_fast import projector_depth


class PixelReferFastProjector(nn.Module):
    """Projects vision features to LLM embeddings.

    Args:
        mm_hidden_size: C (1152).
        hidden_size: D (LLM hidden size).
        projector_type: `"mlp<N>x_gelu"`; anything else raises `ValueError`.

    Forward: `[..., C]` -> `[..., D]` in the weights' dtype.
    """

    def __init__(self, mm_hidden_size: int, hidden_size: int, projector_type: str = "mlp2x_gelu"):
        super().__init__()
        depth = projector_depth(projector_type)
        layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        self.readout = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.readout(features.to(self.readout[0].weight.dtype))


__all__ = ["PixelReferFastProjector"]
