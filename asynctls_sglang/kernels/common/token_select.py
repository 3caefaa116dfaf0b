"""score_select_block_tokens: level 2 in full, the chosen blocks' candidates scored and the token
top-k taken; two launches (score_block_tokens, select_tokens) or one (token_select_kernel)."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.launch import check, check_out, pow2
from asynctls_sglang.kernels.common.token_score import check_blocks, score_block_tokens, score_consts
from asynctls_sglang.kernels.common.token_score_kernel import token_select_kernel
from asynctls_sglang.kernels.common.topk import MAX_K, RESIDENT_MAX_N, resident_launch, select_tokens

#: fused: one program per request and KV head scores its candidates into an L2 scratch row, as
#: many at a time as have chunk_bytes of index codes (1024 at r = 32, 256 at MLA's r = 128; ptxas
#: for sm_90 spills at twice that), and selects from the row in registers (no position tensor,
#: one launch fewer, but only bs * Hk programs score); else the two kernels. Off: it lost at every
#: point of the H200 sweep (session 11; 64.6 against 43.8 us at Qwen3-8B 128k x 8, 184.1 against
#: 32.9 for GLM-4.7-Flash): too few programs score, and MLA's 128 channels per candidate most of all.
LAUNCH = {"fused": False, "chunk_bytes": 16384}
#: The alternatives kernel_bench --sweep times (each tested on the CPU, compiled for sm_90).
SWEEP = ({"fused": True}, {"fused": True, "chunk_bytes": 8192}, {"fused": True, "chunk_bytes": 32768})


def score_select_block_tokens(q: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor,
                              channels: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                              blocks: torch.Tensor, seq_lens: torch.Tensor, block_size: int, sink_tokens: int,
                              local_window: int, k: int, heads: str = "max", *,
                              out: torch.Tensor | None = None, method: str = "auto") -> torch.Tensor:
    """select_tokens(*score_block_tokens(...), k): [bs, Hk, k] positions of the chosen blocks'
    best-scoring candidates, -1 unused, in candidate order (the same set as the two ops; ties:
    the earlier candidate). Arguments as score_block_tokens'; ``out``: the positions to write."""
    bs, hk, kb = check_blocks(blocks, seq_lens, channels)
    n = kb * block_size
    if not LAUNCH["fused"] or n > RESIDENT_MAX_N or bs == 0 or n == 0:
        scores, pos = score_block_tokens(q, codes, scale_zero, channels, req_to_token, req_pool_indices, blocks,
                                         seq_lens, block_size, sink_tokens, local_window, heads, method=method)
        return select_tokens(scores, pos, k, out=out)
    consts = score_consts(q, codes, scale_zero, channels, req_to_token, heads, method)
    check(0 < k <= MAX_K, f"k must be in 1..{MAX_K}, got {k}")
    out = check_out(out, (bs, hk, k), torch.int64, q.device, "score_select_block_tokens")
    scratch = torch.empty(bs, hk, n, dtype=torch.float32, device=q.device)
    block_n = pow2(n, 128)
    # the largest power of two <= chunk_bytes / (r / 2): candidates scored at a time
    chunk = 1 << max(4, (LAUNCH["chunk_bytes"] // consts["BLOCK_R"]).bit_length() - 1)
    token_select_kernel[(hk, bs)](
        q, codes, scale_zero, channels, req_to_token, req_pool_indices, blocks, seq_lens, scratch, out, n, k,
        sink_tokens, local_window,
        q.stride(0), q.stride(1), codes.stride(0), codes.stride(1), scale_zero.stride(0), scale_zero.stride(1),
        channels.stride(0), req_to_token.stride(0), blocks.stride(0), blocks.stride(1), blocks.stride(2),
        scratch.stride(0), scratch.stride(1), out.stride(0), out.stride(1),
        **consts, B=block_size, BLOCK_C=min(chunk, block_n), BLOCK_N=block_n, BLOCK_K=pow2(k, 16),
        **resident_launch(block_n, bs * hk, q.device))
    return out
