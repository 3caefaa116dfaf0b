"""sparse_decode_attention for MLA layers (absorbed form): split kernel + log-sum-exp merge."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.launch import FLOATS, check_counts, cdiv, check, check_out, pow2
from asynctls_sglang.kernels.common.merge import SplitWorkspace, merge_splits, plan_splits, split_workspace
from asynctls_sglang.kernels.mla.decode_kernel import mla_decode_split_kernel

#: Launch parameters: query heads per program (block_h: GLM-4.7-Flash's 20 heads take two
#: programs of 16, each reading every chosen latent row; 32 reads them once), positions per
#: iteration, warps, pipeline stages, the split plan (merge.plan_splits: at least min_tokens
#: positions per split, about `waves` programs per SM), and prefetch (as in gqa.decode).
#: H200 sweeps, GLM-4.7-Flash 128k x 1/8/32, K 2048 (docs/results.md): block_n 32, 19.0/29.5/99.1 us
#: against 20.8/37.5/102.1 for block_n 16 (session 9); three stages, 16.1/27.4/89.3 against
#: 18.9/30.6/99.9 for two (session 12; with waves 4 also 15.8/33.0/74.9). block_h 32 lost
#: (19.9/37.2/93.3): one program reading the chosen rows for all 20 heads keeps fewer in flight.
#: Waves by batch (session 23, GLM-4.7-Flash 128k, K 2048): 2 won at batch 8/12/16 (27.9/36.0/43.5
#: us against 32.5/40.3/47.3 with 4), 4 at batch 24/32 (60.7/75.6 against 73.0/90.7): from
#: `wide_units` (request, head-block) programs on, `wide_waves`. At two waves their splits would
#: hold 352-416 positions each (5-6 splits); at four, 192-256, as at batch 12-16 with two.
LAUNCH = {"block_h": 16, "block_n": 32, "num_warps": 4, "num_stages": 3, "min_tokens": 64, "waves": 2,
          "wide_units": 48, "wide_waves": 4, "prefetch": False}
#: The alternatives kernel_bench --sweep times (each tested on the CPU, compiled for sm_90); the
#: last but two is the batch rule off (two waves at every batch, the default before session 23).
SWEEP = ({"block_n": 16}, {"waves": 4}, {"num_stages": 2}, {"num_stages": 4}, {"num_warps": 8, "waves": 4},
         {"block_n": 16, "num_stages": 2}, {"block_h": 32, "num_warps": 8},
         # the next iteration's positions and slots loaded during this one (session 14, not yet timed)
         {"wide_waves": 2}, {"prefetch": True}, {"prefetch": True, "num_stages": 2})


def split_waves(units: int) -> int:
    """Programs per SM the split plan aims at for `units` (request, head-block) programs (LAUNCH's
    batch rule)."""
    cfg = LAUNCH
    return cfg["wide_waves"] if units >= cfg["wide_units"] else cfg["waves"]


def is_latent_view(k_buffer: torch.Tensor, v_buffer: torch.Tensor) -> bool:
    """True when v_buffer is k_buffer[..., :Dv] (MLA's value: the latent part of the same rows)."""
    return (k_buffer.shape[1] == v_buffer.shape[1] == 1 and v_buffer.shape[0] == k_buffer.shape[0]
            and v_buffer.shape[2] < k_buffer.shape[2] and v_buffer.data_ptr() == k_buffer.data_ptr()
            and v_buffer.stride() == k_buffer.stride() and v_buffer.dtype == k_buffer.dtype)


def mla_sparse_decode(q: torch.Tensor, kv_buffer: torch.Tensor, dv: int,
                      req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                      positions: torch.Tensor, sm_scale: float, logit_cap: float = 0.0, *,
                      out: torch.Tensor | None = None,
                      workspace: SplitWorkspace | None = None,
                      counts: torch.Tensor | None = None, active: int | None = None,
                      out_dtype: torch.dtype = torch.float32, pool: torch.Tensor | None = None) -> torch.Tensor:
    """Exact MLA decode over chosen positions, each latent row read once for K and V.

    q: [bs, Hq, D] (D = Dv + rope, e.g. 512 + 64); kv_buffer [slots, 1, D] (same dtype, unit
    last stride); V = kv_buffer[..., :dv]; positions [bs, 1, K] int64, -1 unused ->
    [bs, Hq, dv] in out_dtype. pool: [slots', 1, D] like kv_buffer: a negative slot s reads row
    -s - 1 of it instead. Not checked at run time: positions < ctx, slots in range.
    """
    bs, hq, d = q.shape
    kk = positions.shape[2]
    check(kv_buffer.dim() == 3 and kv_buffer.shape[1:] == (1, d) and 0 < dv < d,
          f"kv_buffer must be [slots, 1, {d}] with 0 < Dv < {d}")
    check(q.dtype in FLOATS and kv_buffer.dtype == q.dtype, "q and kv_buffer: one float dtype")
    check(positions.shape[:2] == (bs, 1) and positions.dtype == torch.int64, f"positions [{bs}, 1, K] int64")
    for name, t in (("q", q), ("kv_buffer", kv_buffer), ("positions", positions), ("req_to_token", req_to_token)):
        check(t.stride(-1) == 1, f"{name} needs a unit last stride")
    check_counts(counts, bs)
    check(pool is None or (pool.dim() == 3 and pool.shape[1:] == kv_buffer.shape[1:] and pool.dtype == kv_buffer.dtype
                           and pool.stride(-1) == 1), f"pool must be [slots, 1, {d}] {kv_buffer.dtype}, unit last stride")
    check(out_dtype in FLOATS, f"out_dtype must be a float dtype, got {out_dtype}")
    out = check_out(out, (bs, hq, dv), out_dtype, q.device, "sparse_decode_attention")
    if bs == 0:
        return out
    cfg = LAUNCH
    n_hb = cdiv(hq, cfg["block_h"])
    splits, per_split = plan_splits(kk, bs * n_hb, q.device, cfg["block_n"], cfg["min_tokens"], active,
                                    split_waves(bs * n_hb))
    ws = split_workspace(bs, hq, splits, dv, q.device, workspace)
    mla_decode_split_kernel[(bs, n_hb, splits)](
        q, kv_buffer, req_to_token, req_pool_indices, positions,
        positions if counts is None else counts, ws.mid_o, ws.mid_lse, sm_scale, logit_cap, kk, per_split, hq,
        q.stride(0), q.stride(1), kv_buffer.stride(0), req_to_token.stride(0), positions.stride(0),
        ws.mid_o.stride(0), ws.mid_o.stride(1), ws.mid_o.stride(2),
        ws.mid_lse.stride(0), ws.mid_lse.stride(1), kv_buffer if pool is None else pool,
        (kv_buffer if pool is None else pool).stride(0),
        D=d, DV=dv, BLOCK_H=cfg["block_h"], BLOCK_DV=pow2(dv, 16), BLOCK_R=pow2(d - dv, 16),
        BLOCK_N=cfg["block_n"], HAS_CAP=logit_cap > 0,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        HAS_COUNTS=counts is not None, PREFETCH=cfg["prefetch"], HAS_POOL=pool is not None,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
    return merge_splits(ws, splits, out)
