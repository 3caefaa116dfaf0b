from __future__ import annotations

import torch


def quest_bound(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """Quest's per-channel upper bound of q.k over a block, summed over each KV head's group.

    q: [Hq, D]; kmin, kmax: [NB, Hk, D] -> [Hk, NB] fp32.
    bound(h, b) = sum_i max(q_i * min_i, q_i * max_i); group score = sum over the G heads.
    """
    hq, d = q.shape
    nb, hk, _ = kmin.shape
    qg = q.float().view(hk, hq // hk, 1, d)
    lo = kmin.float().permute(1, 0, 2).unsqueeze(1)  # [Hk, 1, NB, D]
    hi = kmax.float().permute(1, 0, 2).unsqueeze(1)
    per_head = torch.maximum(qg * lo, qg * hi).sum(-1)  # [Hk, G, NB]
    return per_head.sum(1)


def block_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """The same bound as ONE matrix product: [q+ | q-] @ [max | min]^T, summed over the group.

    q: [Hq, D]; kmin, kmax: [NB, Hk, D] -> [Hk, NB] fp32. Equal to quest_bound (a test shows
    it): max(q*lo, q*hi) = q+ * hi + q- * lo for lo <= hi.
    """
    hq, d = q.shape
    nb, hk, _ = kmin.shape
    q = q.float()
    lhs = torch.cat([q.clamp(min=0), q.clamp(max=0)], dim=-1).view(hk, hq // hk, 2 * d)  # [Hk, G, 2D]
    rhs = torch.cat([kmax.float(), kmin.float()], dim=-1).permute(1, 2, 0)  # [Hk, 2D, NB]
    return torch.bmm(lhs, rhs).sum(1)
