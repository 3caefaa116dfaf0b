"""sparse_decode_attention for GQA/MHA layers: split kernel + log-sum-exp merge."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.launch import FLOATS, check_counts, check, check_out, pow2
from asynctls_sglang.kernels.common.merge import SplitWorkspace, merge_splits, plan_splits, split_workspace
from asynctls_sglang.kernels.gqa.decode_kernel import gqa_decode_split_kernel

#: Launch parameters: positions per iteration, warps, pipeline stages, the split plan
#: (merge.plan_splits: at least min_tokens positions per split, about `waves` programs per SM), and
#: whether the next iteration's positions and slots are loaded during this one (prefetch).
#: H200 sweep, Qwen3-8B 128k x 1/8/32, K 2048 (docs/results.md, session 9): 14.0/33.9/88.7 us
#: against 14.6/46.5/103.1 for the former num_stages 2, waves 2.
LAUNCH = {"block_n": 32, "num_warps": 4, "num_stages": 3, "min_tokens": 64, "waves": 4, "prefetch": False}
#: The alternatives kernel_bench --sweep times (each tested on the CPU, compiled for sm_90).
SWEEP = ({"num_stages": 2, "waves": 2}, {"waves": 8}, {"block_n": 64}, {"block_n": 64, "num_stages": 2},
         {"block_n": 64, "num_stages": 2, "waves": 2}, {"num_stages": 4}, {"block_n": 16, "waves": 8},
         {"block_n": 64, "num_warps": 8},
         # the next iteration's positions and slots loaded during this one (session 14, not yet timed)
         {"prefetch": True}, {"prefetch": True, "block_n": 64}, {"prefetch": True, "num_stages": 2})


def gqa_sparse_decode(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                      req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                      positions: torch.Tensor, sm_scale: float, logit_cap: float = 0.0, *,
                      out: torch.Tensor | None = None,
                      workspace: SplitWorkspace | None = None,
                      counts: torch.Tensor | None = None, active: int | None = None,
                      out_dtype: torch.dtype = torch.float32,
                      pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Exact attention of each group over its KV head's positions, K/V read in place.

    q: [bs, Hq, D]; k_buffer [slots, Hk, D]; v_buffer [slots, Hk, Dv] (same dtype as q, unit
    last strides); req_to_token [rows, ctx] int32; req_pool_indices [bs]; positions
    [bs, Hk, K] int64, -1 unused -> [bs, Hq, Dv] in out_dtype (zeros for a head with no position).
    fp32 accumulation; bf16/fp16 probabilities feed the second product in the input dtype.
    counts [bs] (optional, on the device): each row reads only its first counts[b] columns;
    active: the column count the splits are sized for (see plan_splits).
    pool: (k_pool, v_pool) shaped and typed like the buffers: a negative slot s (req_to_token's
    entry) reads row -s - 1 of the pool instead (the offload's window tokens, in place).
    Not checked at run time: positions < ctx, slots in range.
    """
    bs, hq, d = q.shape
    _, hk, dk = k_buffer.shape
    dv = v_buffer.shape[2]
    kk = positions.shape[2]
    check(dk == d and v_buffer.shape[1] == hk and hq % hk == 0,
          f"q [bs, Hq, {d}], k [slots, Hk, {d}], v [slots, Hk, Dv] with Hq % Hk == 0")
    check(q.dtype in FLOATS and k_buffer.dtype == v_buffer.dtype == q.dtype, "q, k, v: one float dtype")
    check(positions.shape[:2] == (bs, hk) and positions.dtype == torch.int64, f"positions [{bs}, {hk}, K] int64")
    for name, t in (("q", q), ("k_buffer", k_buffer), ("v_buffer", v_buffer), ("positions", positions),
                    ("req_to_token", req_to_token)):
        check(t.stride(-1) == 1, f"{name} needs a unit last stride")
    check_counts(counts, bs)
    if pool is not None:
        check(len(pool) == 2 and all(p.dim() == 3 and p.shape[1:] == b.shape[1:] and p.dtype == b.dtype
                                     and p.stride(-1) == 1 for p, b in zip(pool, (k_buffer, v_buffer))),
              "pool: (k_pool, v_pool) like (k_buffer, v_buffer) in heads, dims and dtype, unit last strides")
    k_pool, v_pool = pool if pool is not None else (k_buffer, v_buffer)
    check(out_dtype in FLOATS, f"out_dtype must be a float dtype, got {out_dtype}")
    out = check_out(out, (bs, hq, dv), out_dtype, q.device, "sparse_decode_attention")
    if bs == 0:
        return out
    g = hq // hk
    cfg = LAUNCH
    splits, per_split = plan_splits(kk, bs * hk, q.device, cfg["block_n"], cfg["min_tokens"], active, cfg["waves"])
    ws = split_workspace(bs, hq, splits, dv, q.device, workspace)
    gqa_decode_split_kernel[(bs, hk, splits)](
        q, k_buffer, v_buffer, req_to_token, req_pool_indices, positions,
        positions if counts is None else counts, ws.mid_o, ws.mid_lse, sm_scale, logit_cap, kk, per_split,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0),
        v_buffer.stride(1), req_to_token.stride(0), positions.stride(0), positions.stride(1),
        ws.mid_o.stride(0), ws.mid_o.stride(1), ws.mid_o.stride(2),
        ws.mid_lse.stride(0), ws.mid_lse.stride(1), k_pool, v_pool, k_pool.stride(0), k_pool.stride(1),
        v_pool.stride(0), v_pool.stride(1),
        G=g, D=d, DV=dv, BLOCK_G=pow2(g, 16), BLOCK_D=pow2(d, 16), BLOCK_DV=pow2(dv, 16),
        BLOCK_N=cfg["block_n"], HAS_CAP=logit_cap > 0,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        HAS_COUNTS=counts is not None, PREFETCH=cfg["prefetch"], HAS_POOL=pool is not None,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
    return merge_splits(ws, splits, out)
