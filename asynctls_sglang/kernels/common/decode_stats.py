"""record_decode_stats: DecodeStats.record's update in one launch (decode_stats_kernel)."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.decode_stats_kernel import decode_stats_kernel
from asynctls_sglang.kernels.common.launch import cdiv, check, pow2

_BLOCK_R = 16
_BLOCK_W = 256
#: acc's words (adapter.stats.DecodeStats keeps one such int64 buffer)
ACC_WORDS = 7


def record_decode_stats(positions: torch.Tensor, acc: torch.Tensor, dense: torch.Tensor | None = None) -> None:
    """positions [n, Hk, W] (-1 unused) of one layer; dense [n] bool, rows not counted (None: all
    counted); acc int64 [ACC_WORDS] (min, max, sum, count, last, scratch, ticket), updated on the
    device as DecodeStats.record's torch form updates its counters."""
    check(positions.dim() == 3 and positions.stride(2) == 1 and not positions.dtype.is_floating_point,
          "positions must be integer [n, Hk, W] with a unit last stride")
    check(acc.shape == (ACC_WORDS,) and acc.dtype == torch.int64 and acc.is_contiguous(),
          f"acc must be a contiguous int64 [{ACC_WORDS}]")
    n, hk, w = positions.shape
    check(dense is None or (dense.shape == (n,) and dense.dtype == torch.bool), f"dense must be bool [{n}]")
    if n * hk == 0:
        # NOTE: the torch form sets `last` to 0 for a call without rows
        acc[4].zero_()
        return
    decode_stats_kernel[(cdiv(n * hk, _BLOCK_R),)](
        positions, dense if dense is not None else positions, acc, n, hk, w, positions.stride(0), positions.stride(1),
        HAS_DENSE=dense is not None, BLOCK_R=_BLOCK_R, BLOCK_W=min(_BLOCK_W, pow2(w, 16)))
