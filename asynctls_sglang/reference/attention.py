from __future__ import annotations

import torch


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """One decode query against every key. q: [Hq, D]; k: [T, Hk, D]; v: [T, Hk, Dv] -> [Hq, Dv] fp32."""
    t = k.shape[0]
    positions = torch.arange(t).expand(k.shape[1], t)
    return sparse_attention(q, k, v, positions, sm_scale)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                     sm_scale: float) -> torch.Tensor:
    """Exact attention of each KV head's group over that head's chosen positions.

    q: [Hq, D]; k: [T, Hk, D]; v: [T, Hk, Dv]; positions: [Hk, K] int64, -1 = unused slot.
    -> [Hq, Dv] fp32. A head with no valid position yields zeros.
    """
    hq, d = q.shape
    hk, kk = positions.shape
    valid = positions >= 0
    pos = positions.clamp(min=0)
    heads = torch.arange(hk).unsqueeze(1).expand(hk, kk)
    ks = k.float()[pos, heads]  # [Hk, K, D]
    vs = v.float()[pos, heads]  # [Hk, K, Dv]
    qg = q.float().view(hk, hq // hk, d)
    logits = torch.einsum("hgd,hkd->hgk", qg, ks) * sm_scale
    logits = logits.masked_fill(~valid.unsqueeze(1), float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.einsum("hgk,hkv->hgv", probs, vs).reshape(hq, -1)
