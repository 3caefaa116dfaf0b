"""score_blocks: the level-1 block bounds of every request and KV head."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.block_score_kernel import block_score_kernel
from asynctls_sglang.kernels.common.launch import FLOATS, cdiv, check, check_out, pow2


#: Launch parameters: blocks per program and warps for head dims up to 128 / larger (MLA's
#: 576-wide latent keys), pipeline stages, KV heads per program.
#: H200 sweeps (docs/results.md): block_m_wide 64 for MLA, 19.0/27.8/87.9 us at 128k x 1/8/32
#: against 18.7/34.6/116.3 for 32 (session 9); 8 warps for GQA, Qwen3-8B 128k x 1/8/32 9.9/28.4/78.3
#: against 10.2/29.8/81.9 with 4, while MLA with 8 lost (38.4 against 27.4 at 128k x 8); 2-8 KV
#: heads per program (a page's summaries of adjacent heads read as one run) lost for GQA (35.8-41.6
#: at 128k x 8) and changed nothing for MLA, whose one latent head it cannot group (session 11).
#: split_d_wide: for head dims over 128, one program per 128-channel slice of a page tile, the
#: slices' partial scores added by one torch sum (5x the programs for MLA's 576): GLM-4.7-Flash
#: 128k x 1/8/32 12.0/26.8/72.0 us against 19.1/27.4/87.6 in one program, 32k x 1/8 10.1/14.1
#: against 18.8/20.1 (session 12).
LAUNCH = {"block_m": 64, "block_m_wide": 64, "num_warps": 8, "num_warps_wide": 4, "num_stages": 3, "heads": 1,
          "split_d_wide": True}
#: The alternatives kernel_bench --sweep times (each tested on the CPU, compiled for sm_90).
SWEEP = ({"block_m_wide": 32}, {"block_m": 128, "block_m_wide": 128}, {"num_warps": 4},
         {"num_warps_wide": 8}, {"num_stages": 4}, {"block_m": 128, "num_warps": 4}, {"num_stages": 2},
         {"heads": 2}, {"heads": 4, "num_warps": 4}, {"split_d_wide": False},
         {"split_d_wide": False, "block_m_wide": 128}, {"num_warps_wide": 8, "block_m_wide": 128})


def score_blocks(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, pages: torch.Tensor,
                 seq_lens: torch.Tensor, block_size: int, sink_tokens: int, local_window: int,
                 *, out: torch.Tensor | None = None, partials: bool = False) -> torch.Tensor:
    """Same contract as torch_ops.score_blocks (fp32 sums in a different order: close, not equal).
    ``partials``: the channel slices' rows [S, bs, Hk, MB] unsummed (S = 5 for MLA's 576-wide keys,
    else 1; ``out`` then is not used): a consumer that adds them (offload_tables.readable_pair)
    saves the sum's launch.

    q: [bs, Hq, D] float (unit D stride); kmin, kmax: [pages, Hk, D] (same strides, unit D
    stride); pages: [bs, MB] int (unit last stride); seq_lens: [bs] -> [bs, Hk, MB] fp32,
    -inf for blocks past the length or wholly inside the sink / local ranges.
    Not checked at run time: page ids of live blocks in range.
    """
    bs, hq, d = q.shape
    pages_n, hk, dk = kmin.shape
    mb = pages.shape[1]
    check(dk == d and kmax.shape == kmin.shape, f"kmin/kmax must be [pages, Hk, {d}]")
    check(hq % hk == 0, f"Hq ({hq}) must be a multiple of Hk ({hk})")
    check(q.dtype in FLOATS and kmin.dtype in FLOATS and kmin.dtype == kmax.dtype, "float inputs")
    check(q.stride(2) == 1 and kmin.stride() == kmax.stride() and kmin.stride(2) == 1,
          "q, kmin, kmax: unit D stride; kmin and kmax with the same strides")
    check(pages.shape[0] == bs and pages.stride(1) == 1 and seq_lens.shape == (bs,), "pages [bs, MB], seq_lens [bs]")
    check(not (partials and out is not None), "score_blocks: partials=True writes no out")
    g = hq // hk
    cfg = LAUNCH
    wide = d > 128
    block_m = cfg["block_m_wide"] if wide else cfg["block_m"]
    block_d = min(pow2(d, 16), 128)
    heads = min(cfg["heads"], hk)
    n_dc = cdiv(d, block_d) if wide and cfg["split_d_wide"] else 1
    if partials:
        out = torch.empty((n_dc, bs, hk, mb), dtype=torch.float32, device=q.device)
        if bs == 0 or mb == 0:
            return out
        dst = out if n_dc > 1 else out[0]
    else:
        out = check_out(out, (bs, hk, mb), torch.float32, q.device, "score_blocks")
        if bs == 0 or mb == 0:
            return out
        # NOTE: the slices' partial rows are summed by torch (fixed order: deterministic), [slices, bs, Hk, MB]
        dst = out if n_dc == 1 else torch.empty((n_dc, bs, hk, mb), dtype=torch.float32, device=q.device)
    block_score_kernel[(cdiv(mb, block_m) * n_dc, cdiv(hk, heads), bs)](
        q, kmin, kmax, pages, seq_lens, dst, mb, sink_tokens, local_window,
        q.stride(0), q.stride(1), pages.stride(0), kmin.stride(0), kmin.stride(1),
        dst.stride(-3), dst.stride(-2), dst.stride(0) if n_dc > 1 else 0,
        G=g, D=d, B=block_size, BLOCK_G=pow2(g), BLOCK_M=block_m, BLOCK_D=block_d, HK=hk, HEADS=heads,
        SPLIT_D=n_dc > 1, num_warps=cfg["num_warps_wide" if wide else "num_warps"], num_stages=cfg["num_stages"])
    if n_dc > 1 and not partials:
        torch.sum(dst, 0, out=out)
    return out
