"""truncate_candidates: the block-only (Quest) selection, first k candidates in block-rank order."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.compact_kernel import compact_kernel
from asynctls_sglang.kernels.common.launch import check, check_out, pow2


def truncate_candidates(pos: torch.Tensor, ok: torch.Tensor, k: int, *,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as torch_ops.truncate_candidates (exact).

    pos [bs, Hk, N] int64, ok [bs, Hk, N] bool (unit last stride) -> [bs, Hk, k] int64:
    the positions whose ok is set, in order, then -1.
    """
    bs, hk, n = pos.shape
    check(ok.shape == pos.shape and ok.dtype == torch.bool and pos.dtype == torch.int64, "pos int64, ok bool, same shape")
    out = check_out(out, (bs, hk, k), torch.int64, pos.device, "truncate_candidates")
    pos2d, ok2d = pos.reshape(-1, n), ok.reshape(-1, n).view(torch.uint8)
    check(pos2d.stride(1) == 1 and ok2d.stride(1) == 1, "pos and ok need a unit last stride")
    rows = pos2d.shape[0]
    if rows == 0 or k == 0:
        return out
    out2d = out.view(-1, k)
    compact_kernel[(rows,)](pos2d, ok2d, out2d, n, k, pos2d.stride(0), ok2d.stride(0), out2d.stride(0),
                            BLOCK_N=min(pow2(max(n, k), 128), 1024))
    return out
