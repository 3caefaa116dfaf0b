"""copy_blocks on any device: the Triton kernel when a GPU takes part, plain torch on the CPU.

Same contract as asynctls_sglang.kernels.common.gather_host.copy_blocks (see there):
dst[dst_block[i]*B : +B] = src[src_block[i]*B : +B] for i < count[0], skipping -1 entries,
optionally one KV head per entry. Buffers are [tokens, Hk, D].
"""
from __future__ import annotations

import torch


def copy_blocks_torch(src: torch.Tensor, dst: torch.Tensor, src_block: torch.Tensor,
                      dst_block: torch.Tensor, count: torch.Tensor, block_size: int,
                      head: torch.Tensor | None = None) -> None:
    """CPU path and the kernel's reference. Reads count on the host (free on the CPU; a sync on a
    GPU, where copy_blocks uses the kernel instead)."""
    n = int(count.reshape(-1)[0])
    b = block_size
    src_b = src.view(-1, b, *src.shape[1:])  # [blocks, B, Hk, D]
    dst_b = dst.view(-1, b, *dst.shape[1:])
    s, d = src_block[:n].long().cpu(), dst_block[:n].long().cpu()
    live = (s >= 0) & (d >= 0)
    s, d = s[live], d[live]
    if head is None:
        dst_b.index_copy_(0, d.to(dst.device), src_b.index_select(0, s.to(src.device)).to(dst.device))
        return
    h = head[:n].long().cpu()[live]
    dst_b[d.to(dst.device), :, h.to(dst.device)] = src_b[s.to(src.device), :, h.to(src.device)].to(dst.device)


def copy_blocks(src: torch.Tensor, dst: torch.Tensor, src_block: torch.Tensor, dst_block: torch.Tensor,
                count: torch.Tensor, block_size: int, head: torch.Tensor | None = None,
                pair: tuple[torch.Tensor, torch.Tensor] | None = None, programs: int | None = None) -> None:
    """pair: (src2, dst2) copied by the same entries (V beside K: one launch on a GPU); programs:
    the kernel's programs (None: its default; see gather_host.copy_blocks)."""
    if src.device.type == "cuda" or dst.device.type == "cuda":
        from asynctls_sglang.kernels.common.gather_host import copy_blocks as copy_blocks_triton

        copy_blocks_triton(src, dst, src_block, dst_block, count, block_size, head, pair, programs=programs)
        return
    copy_blocks_torch(src, dst, src_block, dst_block, count, block_size, head)
    if pair is not None:
        copy_blocks_torch(pair[0], pair[1], src_block, dst_block, count, block_size, head)
