"""candidate_positions: the level-2 candidates of the chosen blocks in one launch."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.candidates_kernel import candidates_kernel
from asynctls_sglang.kernels.common.launch import cdiv, check, check_out


def candidate_positions(blocks: torch.Tensor, seq_lens: torch.Tensor, block_size: int, sink_tokens: int,
                        local_window: int, *, out: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as torch_ops.candidate_positions (exact), one kernel instead of ~10 torch ops.

    blocks [bs, Hk, k_b] int (any strides; -1 unused), seq_lens [bs] ->
    (pos [bs, Hk, k_b * B] int64, ok [bs, Hk, k_b * B] bool). ``out``: a (pos, ok) pair to write.
    """
    bs, hk, kb = blocks.shape
    n = kb * block_size
    check(seq_lens.shape == (bs,), f"seq_lens must be [{bs}]")
    pos_out, ok_out = out if out is not None else (None, None)
    pos = check_out(pos_out, (bs, hk, n), torch.int64, blocks.device, "candidate_positions pos")
    ok = check_out(ok_out, (bs, hk, n), torch.bool, blocks.device, "candidate_positions ok")
    if bs == 0 or n == 0:
        return pos, ok
    ok8 = ok.view(torch.uint8)
    block_n = 1024
    candidates_kernel[(cdiv(n, block_n), hk, bs)](
        blocks, seq_lens, pos, ok8, n, sink_tokens, local_window,
        blocks.stride(0), blocks.stride(1), blocks.stride(2), pos.stride(0), pos.stride(1),
        ok8.stride(0), ok8.stride(1), B=block_size, BLOCK_N=block_n)
    return pos, ok
