from __future__ import annotations

import torch


def calibrate_channels(q: torch.Tensor, k: torch.Tensor, r: int) -> torch.Tensor:
    """Online Double-Sparsity calibration from a prefill's own queries and keys.

    The weight of channel c for a KV head is E|q_c| * E|k_c| over the prefill's tokens and the
    head's group (the expected magnitude of channel c's term in q.k). The r heaviest channels
    are returned in ascending channel order (ties: lower channel first).
    q: [T, Hq, D]; k: [T, Hk, D] -> [Hk, r] int64.
    """
    t, hq, d = q.shape
    hk = k.shape[1]
    qmag = q.float().abs().view(t, hk, hq // hk, d).mean(dim=(0, 2))  # [Hk, D]
    kmag = k.float().abs().mean(dim=0)  # [Hk, D]
    order = torch.sort(qmag * kmag, dim=-1, descending=True, stable=True).indices[:, :r]
    return order.sort(dim=-1).values


#: 1/15 rounded to fp32 (0x1.111112p-4, held exactly as a Python float); the INT4 step is
#: (hi - lo) * INV_15 everywhere.
INV_15 = float.fromhex("0x1.111112p-4")


def quantize_index_keys(k: torch.Tensor, channels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 index keys: the r channels of each key, asymmetric 4-bit per (token, head).

    k: [T, Hk, D]; channels: [Hk, r] -> (codes [T, Hk, r // 2] uint8, two codes per byte, low
    nibble = even channel; scale_zero [T, Hk, 2] fp32 = (scale, zero)). Value = code*scale+zero.
    Round half away from zero (torch.round is half-to-even: floor(x + 0.5) is used instead).
    scale = (hi - lo) * fp32(1/15), a multiplication by the rounded reciprocal rather than a
    division by 15: torch on CUDA evaluates `tensor / python_scalar` that way, on the CPU as an
    IEEE division, so only the multiplication gives the same bits on every device (and in the
    Triton kernel). The codes use an IEEE division by the (tensor) scale on every device.
    """
    t, hk, _ = k.shape
    sub = torch.gather(k.float(), 2, channels.unsqueeze(0).expand(t, -1, -1))  # [T, Hk, r]
    lo = sub.amin(-1, keepdim=True)
    hi = sub.amax(-1, keepdim=True)
    scale = (hi - lo) * INV_15
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.floor((sub - lo) / safe + 0.5).clamp(0, 15).to(torch.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed, torch.cat([scale, lo], dim=-1)


def dequantize_index_keys(codes: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
    """[T, Hk, r // 2] uint8, [T, Hk, 2] -> [T, Hk, r] fp32."""
    lo = (codes & 0xF).float()
    hi = (codes >> 4).float()
    vals = torch.stack([lo, hi], dim=-1).flatten(-2)
    return vals * scale_zero[..., :1] + scale_zero[..., 1:]


def token_scores(q: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor,
                 channels: torch.Tensor, heads: str = "max") -> torch.Tensor:
    """Approximate q.k from the index keys, combined over each KV head's group of query heads:
    heads "max" (the highest head's score) or "mean" (the group average).

    q: [Hq, D]; codes [T, Hk, r//2]; scale_zero [T, Hk, 2]; channels [Hk, r] -> [Hk, T] fp32.
    """
    hq = q.shape[0]
    hk, r = channels.shape
    qh = q.float().view(hk, hq // hk, -1)  # [Hk, G, D]
    qsub = torch.gather(qh, 2, channels.unsqueeze(1).expand(-1, hq // hk, -1))  # [Hk, G, r]
    keys = dequantize_index_keys(codes, scale_zero)  # [T, Hk, r]
    per_head = torch.einsum("hgr,thr->hgt", qsub, keys)
    return per_head.amax(1) if heads == "max" else per_head.mean(1)
