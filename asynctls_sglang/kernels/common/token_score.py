"""score_tokens / score_block_tokens: INT4 index-key scores of the candidate tokens of the chosen blocks."""
from __future__ import annotations

import torch

from asynctls_sglang.config import TOKEN_HEADS
from asynctls_sglang.kernels.common.launch import FLOATS, cdiv, check, check_out, pow2
from asynctls_sglang.kernels.common.token_score_kernel import token_score_kernel

#: heads="max" by one reduction per query head ("loop", the first kernel) or by tl.dot of the code
#: tiles with all the group's heads at once ("dot"); "auto": dot for a 16-bit q and G > 1. With
#: fp32 q the dot is "ieee", i.e. FMAs again, over the heads padded to 16 and a layout change
#: (ptxas for sm_90, G = 20: 708 B spilled vs 124 B by the loop; with bf16 q: wgmma tf32, 215
#: registers, no spill, vs 255 and spills); with G = 1 there is nothing to batch.
METHODS = ("auto", "dot", "loop")


#: Launch parameters: candidates per program (128 with 4 warps, ~44 registers: ~1400 candidates in
#: flight per SM; the gathers are latency-bound), warps, pipeline stages.
LAUNCH = {"block_n": 128, "num_warps": 4, "num_stages": 3}
#: The alternatives kernel_bench --sweep times (each tested on the CPU, compiled for sm_90).
SWEEP = ({"block_n": 64}, {"block_n": 256}, {"num_warps": 8}, {"block_n": 256, "num_warps": 8},
         {"block_n": 64, "num_warps": 2}, {"num_stages": 2})


def score_tokens(q: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor,
                 channels: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                 pos: torch.Tensor, ok: torch.Tensor, heads: str = "max", *,
                 out: torch.Tensor | None = None, method: str = "auto") -> torch.Tensor:
    """Same contract as torch_ops.score_tokens (fp32, summed in another order: close, not equal).

    q: [bs, Hq, D] float; codes [slots, Hk, r // 2] uint8; scale_zero [slots, Hk, 2] float;
    channels [Hk, r] int; req_to_token [rows, ctx] int32; req_pool_indices [bs];
    pos [bs, Hk, N] int64, ok [bs, Hk, N] bool -> [bs, Hk, N] fp32, -inf where not ok.
    All with a unit last stride. Not checked at run time: ok positions inside req_to_token,
    slots and channels in range.

    ``method`` (heads="max" only): "loop" (a static loop over the G query heads, one reduction
    each), "dot" (two tl.dot of the [BLOCK_N, r/2] code tiles with the heads' [r/2, G] query tiles,
    G and r/2 padded to 16), "auto" (dot for a bf16/fp16 q and G > 1, else loop). heads="mean"
    scores the one group-mean query and ignores it.
    """
    n = pos.shape[2]
    check(pos.shape == ok.shape == (q.shape[0], channels.shape[0], n) and pos.dtype == torch.int64
          and ok.dtype == torch.bool, f"pos int64 / ok bool must be [{q.shape[0]}, {channels.shape[0]}, N]")
    check(pos.stride(-1) == 1 and ok.stride(-1) == 1, "pos and ok need a unit last stride")
    out = check_out(out, tuple(pos.shape), torch.float32, q.device, "score_tokens")
    _launch(q, codes, scale_zero, channels, req_to_token, req_pool_indices, pos, ok.view(torch.uint8), out,
            heads, method)
    return out


def score_block_tokens(q: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor,
                       channels: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                       blocks: torch.Tensor, seq_lens: torch.Tensor, block_size: int, sink_tokens: int,
                       local_window: int, heads: str = "max", *,
                       out: tuple[torch.Tensor, torch.Tensor] | None = None,
                       method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as torch_ops.score_block_tokens: candidate_positions of the chosen blocks
    [bs, Hk, k_b] (-1 unused) and their score_tokens in one launch (no ok tensor, no second
    pass over the positions) -> (scores [bs, Hk, k_b * B] fp32, pos [bs, Hk, k_b * B] int64).
    pos is bit-exact with candidate_positions; the scores equal score_tokens' on those candidates
    bit for bit. ``out``: a (scores, pos) pair to write."""
    bs, hk, kb = check_blocks(blocks, seq_lens, channels)
    n = kb * block_size
    scores_out, pos_out = out if out is not None else (None, None)
    scores = check_out(scores_out, (bs, hk, n), torch.float32, q.device, "score_block_tokens scores")
    pos = check_out(pos_out, (bs, hk, n), torch.int64, q.device, "score_block_tokens pos")
    _launch(q, codes, scale_zero, channels, req_to_token, req_pool_indices, pos, pos, scores, heads, method,
            blocks=blocks, seq_lens=seq_lens, block_size=block_size, sink=sink_tokens, local=local_window)
    return scores, pos


def check_blocks(blocks: torch.Tensor, seq_lens: torch.Tensor, channels: torch.Tensor) -> tuple[int, int, int]:
    """The chosen blocks [bs, Hk, k_b] against seq_lens [bs] and the index channels [Hk, r]
    -> (bs, Hk, k_b)."""
    bs, hk, kb = blocks.shape
    check(seq_lens.shape == (bs,), f"seq_lens must be [{bs}]")
    check(channels.shape[0] == hk, f"blocks must be [bs, {channels.shape[0]}, k_b]")
    return bs, hk, kb


def score_consts(q: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor, channels: torch.Tensor,
                 req_to_token: torch.Tensor, heads: str, method: str) -> dict:
    """Checks the arguments every token-scoring launch shares -> the scoring constexprs of
    token_score_kernel._candidate_scores (G, R2, HEAD_MAX, HEADS_DOT, PRECISION, BLOCK_G, BLOCK_R)."""
    hq = q.shape[1]
    hk, r = channels.shape
    check(q.dtype in FLOATS and hq % hk == 0, f"q float, Hq ({hq}) a multiple of Hk ({hk})")
    check(heads in TOKEN_HEADS, f"heads must be one of {TOKEN_HEADS}, got {heads!r}")
    check(method in METHODS, f"method must be one of {METHODS}, got {method!r}")
    check(codes.dim() == 3 and codes.shape[1:] == (hk, r // 2) and codes.dtype == torch.uint8,
          f"codes must be [slots, {hk}, {r // 2}] uint8")
    check(scale_zero.dim() == 3 and scale_zero.shape[1:] == (hk, 2), "scale_zero must be [slots, Hk, 2]")
    for name, t in (("q", q), ("codes", codes), ("scale_zero", scale_zero), ("channels", channels),
                    ("req_to_token", req_to_token)):
        check(t.stride(-1) == 1, f"{name} needs a unit last stride")
    g = hq // hk
    dot = heads == "max" and (method == "dot" or (method == "auto" and g > 1 and q.dtype != torch.float32))
    return dict(G=g, R2=r // 2, HEAD_MAX=heads == "max", HEADS_DOT=dot,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # 16-bit q and the codes: exact in tf32
                BLOCK_G=pow2(g, 16 if dot else 1), BLOCK_R=pow2(r // 2, 16 if dot else 2))


def _launch(q, codes, scale_zero, channels, req_to_token, req_pool_indices, pos, ok, out, heads, method, *,
            blocks=None, seq_lens=None, block_size=1, sink=0, local=0) -> None:
    """Checks the shared arguments and launches token_score_kernel (ok: uint8 view; with blocks,
    pos is written and ok unused)."""
    consts = score_consts(q, codes, scale_zero, channels, req_to_token, heads, method)
    bs = q.shape[0]
    hk = channels.shape[0]
    n = pos.shape[2]
    if bs == 0 or n == 0:
        return
    cfg = LAUNCH
    block_n = cfg["block_n"]
    from_blocks = blocks is not None
    if not from_blocks:
        blocks, seq_lens = pos, pos  # unused by the kernel (FROM_BLOCKS=False)
    token_score_kernel[(cdiv(n, block_n), hk, bs)](
        q, codes, scale_zero, channels, req_to_token, req_pool_indices, pos, ok,
        out, n,
        q.stride(0), q.stride(1), codes.stride(0), codes.stride(1), scale_zero.stride(0),
        scale_zero.stride(1), channels.stride(0), req_to_token.stride(0), pos.stride(0),
        pos.stride(1), ok.stride(0), ok.stride(1), out.stride(0), out.stride(1),
        blocks, seq_lens, blocks.stride(0), blocks.stride(1), blocks.stride(2), sink, local,
        **consts, BLOCK_N=block_n, FROM_BLOCKS=from_blocks, B=block_size if from_blocks else 1,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
