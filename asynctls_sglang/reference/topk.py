from __future__ import annotations

import torch


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores along the last dim, with a stated tie-break.

    Order: higher score first; equal scores: the lower index first. Entries that are -inf (or
    NaN-free masked out) are never chosen: their slots hold -1. k may exceed the length.
    scores: [..., N] -> [..., k] int64.
    """
    n = scores.shape[-1]
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    if k > n:
        pad = order.new_full((*order.shape[:-1], k - n), -1)
        order = torch.cat([order, pad], dim=-1)
    order = order[..., :k]
    chosen = torch.gather(scores, -1, order.clamp(min=0))
    return torch.where((order >= 0) & (chosen > float("-inf")), order, torch.full_like(order, -1))
