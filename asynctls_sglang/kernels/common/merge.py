"""Token-axis splits of a decode attention: how many, their workspace, and the merge launch."""
from __future__ import annotations

from typing import NamedTuple

import torch

from asynctls_sglang.kernels.common.launch import cdiv, check, pow2, sm_count
from asynctls_sglang.kernels.common.merge_kernel import merge_splits_kernel

#: Upper bound on splits (bounds the merge's registers and the workspace).
MAX_SPLITS = 64


class SplitWorkspace(NamedTuple):
    """Partial results of the splits: mid_o [bs, Hq, S, Dv] fp32, mid_lse [bs, Hq, S] fp32 (base 2)."""

    mid_o: torch.Tensor
    mid_lse: torch.Tensor


def plan_splits(n_tokens: int, n_units: int, device: torch.device, block_n: int,
                min_tokens: int, active: int | None = None, waves: int = 2) -> tuple[int, int]:
    """(splits, tokens per split) for `n_units` (request, head-block) programs over `n_tokens`
    positions: enough splits for about `waves` programs per SM, each of at least `min_tokens`
    positions (a multiple of block_n). ``active`` (<= n_tokens): the columns most rows actually
    read (per-row counts; the rest is padding whose splits exit at once): the splits are sized for
    it, and as many more as cover n_tokens, up to MAX_SPLITS. Shapes only: the same answer every step."""
    n_tokens = max(n_tokens, 1)
    active = n_tokens if active is None else max(1, min(active, n_tokens))
    want = cdiv(waves * sm_count(device), max(n_units, 1))
    splits = max(1, min(want, cdiv(active, min_tokens), MAX_SPLITS))
    per_split = cdiv(cdiv(active, splits), block_n) * block_n
    per_split = max(per_split, cdiv(cdiv(n_tokens, MAX_SPLITS), block_n) * block_n)
    return cdiv(n_tokens, per_split), per_split


def split_workspace(bs: int, hq: int, splits: int, dv: int, device: torch.device,
                    workspace: SplitWorkspace | None) -> SplitWorkspace:
    """The caller's workspace if it is large enough (a prefix of its split axis is used), else a new one."""
    if workspace is None:
        return SplitWorkspace(torch.empty((bs, hq, splits, dv), dtype=torch.float32, device=device),
                              torch.empty((bs, hq, splits), dtype=torch.float32, device=device))
    mid_o, mid_lse = workspace
    check(mid_o.shape[:2] == (bs, hq) and mid_o.shape[2] >= splits and mid_o.shape[3] == dv
          and mid_lse.shape[:2] == (bs, hq) and mid_lse.shape[2] >= splits
          and mid_o.dtype == mid_lse.dtype == torch.float32 and mid_o.stride(3) == 1,
          f"workspace must hold [{bs}, {hq}, >={splits}, {dv}] and [{bs}, {hq}, >={splits}] fp32")
    return workspace


def merge_splits(ws: SplitWorkspace, splits: int, out: torch.Tensor) -> torch.Tensor:
    """out [bs, Hq, Dv] (any float dtype: the fp32 average rounded as it is stored) = the log-sum-exp
    weighted average of the first `splits` partials."""
    bs, hq, dv = out.shape
    block_dv = min(pow2(dv, 16), 128)
    merge_splits_kernel[(bs, hq, cdiv(dv, block_dv))](
        ws.mid_o, ws.mid_lse, out, splits,
        ws.mid_o.stride(0), ws.mid_o.stride(1), ws.mid_o.stride(2),
        ws.mid_lse.stride(0), ws.mid_lse.stride(1), out.stride(0), out.stride(1),
        DV=dv, BLOCK_S=pow2(splits, 2), BLOCK_DV=block_dv)
    return out
