"""The LLM's key mask for a prefill over padded rows, built on the device (no host read).

transformers' own mask builder reads tensors on the host in eager mode; the prefill of the model's
forward (`PixelReferFastModel._prefill_mask`) and the shared-prefix prefill (`decoding.prefix`) hand
Qwen2 this prepared mask instead (`{"full_attention": mask}`).
"""

from __future__ import annotations

import torch


def causal_padding_mask(valid: torch.Tensor, start: int, implementation: str, dtype: torch.dtype) -> dict:
    """`{"full_attention": [B, 1, T - start, T]}` for queries at positions `[start, T)` of `[B, T]` rows
    whose real tokens are `valid` (bool): a query sees the valid keys up to its own position. Padding
    queries see every key, as transformers' own SDPA mask lets them (their rows are never read, and no
    row is all -inf). Bool for SDPA; additive in `dtype` for eager attention."""
    length = valid.shape[1]
    positions = torch.arange(length, device=valid.device)
    allowed = (positions[None, :] <= positions[start:, None])[None, None] & valid[:, None, None, :]  # (B, 1, Q, T)
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    if implementation == "eager":
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return {"full_attention": allowed}
