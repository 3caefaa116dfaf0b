"""copy_blocks: move whole KV blocks (or one KV head of them) between token-major buffers.

The offloading engine's data mover (asynctls_sglang.memory): host->device gathers of the
resident cache's misses, and device->host write-through of completed blocks. On a GPU one
Triton kernel reads or writes pinned host memory directly through its device address (UVA):
Triton 3.6's launcher turns any tensor's data_ptr() into a device pointer with
cuPointerGetAttribute(CU_POINTER_ATTRIBUTE_DEVICE_POINTER), which succeeds for pinned (page-locked)
host memory and raises "cannot be accessed from Triton (cpu tensor?)" for pageable memory, so
the pinned CPU tensor itself is passed. The grid is the fixed plan capacity and the number of
live entries is read from device memory: no host sync, CUDA-graph capturable.
"""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.gather_host_kernel import (copy_blocks_d2h_kernel, copy_blocks_h2d_kernel,
                                                               copy_blocks_kernel)
from asynctls_sglang.kernels.common.launch import check, pow2

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _rows(buf: torch.Tensor) -> torch.Tensor:
    """[tokens, H, D] (any 2-byte/4-byte dtype) -> [tokens, H * D] integer view, same memory."""
    check(buf.dim() == 3 and buf.stride(2) == 1 and buf.stride(1) == buf.shape[2],
          f"copy_blocks: buffers must be [tokens, H, D] with dense heads, got {tuple(buf.shape)} "
          f"strides {buf.stride()}")
    flat = buf.view(buf.shape[0], buf.shape[1] * buf.shape[2]) if buf.is_contiguous() else \
        buf.as_strided((buf.shape[0], buf.shape[1] * buf.shape[2]), (buf.stride(0), 1))
    return flat.view(_BITS[buf.element_size()])


#: programs of one copy launch (see copy_blocks_kernel)
PROGRAMS = 32


def copy_blocks(src: torch.Tensor, dst: torch.Tensor, src_block: torch.Tensor, dst_block: torch.Tensor,
                count: torch.Tensor, block_size: int, head: torch.Tensor | None = None,
                pair: tuple[torch.Tensor, torch.Tensor] | None = None, spread: bool | None = None,
                programs: int | None = None) -> None:
    """dst[dst_block[i]*B : +B] = src[src_block[i]*B : +B] for i < count[0] (bit-exact).

    src, dst: [tokens, Hk, D] same dtype (one may be pinned host memory, the other on the GPU;
    under TRITON_INTERPRET both on the CPU). src_block, dst_block: [P] int32/int64 block ids,
    -1 = skip. count: [1] int32/int64 on the kernel's device. head: [P] KV head per entry (copy
    only that head's D columns) or None (all heads). pair: (src2, dst2) copied by the same entries
    in the same launch (V beside K; same shapes and dtype as src/dst, else a second launch).
    spread: split every entry's columns over programs too (copies within the GPU, bound by HBM);
    None: when every buffer is on a GPU. A copy with host memory keeps PROGRAMS programs (PCIe).
    programs: the entries' programs (the grid's first axis, at most the plan size); None: PROGRAMS.
    Not checked at run time: ids in range, head < Hk, distinct destinations (duplicates race).
    """
    check(src.dtype == dst.dtype and src.shape[1:] == dst.shape[1:],
          f"copy_blocks: src {tuple(src.shape)} {src.dtype} vs dst {tuple(dst.shape)} {dst.dtype}")
    check(src_block.shape == dst_block.shape and src_block.dim() == 1, "copy_blocks: [P] block lists")
    check(head is None or head.shape == src_block.shape, "copy_blocks: head must be [P] like the blocks")
    check(count.numel() == 1, "copy_blocks: count must hold one element")
    programs = PROGRAMS if programs is None else programs
    check(isinstance(programs, int) and programs > 0, f"copy_blocks: programs must be a positive int, got {programs!r}")
    check(block_size > 0 and block_size & (block_size - 1) == 0,
          f"copy_blocks: block_size must be a power of two (tl.arange), got {block_size}")
    if pair is not None and not (pair[0].dtype == src.dtype and pair[0].shape[1:] == src.shape[1:]
                                 and pair[1].dtype == dst.dtype and pair[1].shape[1:] == dst.shape[1:]):
        copy_blocks(pair[0], pair[1], src_block, dst_block, count, block_size, head, spread=spread, programs=programs)
        pair = None
    p = src_block.shape[0]
    if p == 0:
        return
    s2, d2 = _rows(src), _rows(dst)
    s3, d3 = (_rows(pair[0]), _rows(pair[1])) if pair is not None else (s2, d2)
    w = src.shape[2] if head is not None else src.shape[1] * src.shape[2]
    block_w = min(pow2(w, 16), max(16, 8192 // block_size))
    if spread is None:
        spread = all(t.is_cuda for t in (src, dst, *(pair or ())))
    # NOTE: the stride G is always `programs` (a constexpr: a G that followed the plan size compiled
    # a variant per small count, during serving); a plan smaller than that launches fewer programs
    grid = (min(p, programs), -(-w // block_w) if spread else 1)
    # NOTE: the direction names the kernel (one body): profiles tell the offload's transfers apart
    kernel = copy_blocks_h2d_kernel if dst.is_cuda and not src.is_cuda else \
        copy_blocks_d2h_kernel if src.is_cuda and not dst.is_cuda else copy_blocks_kernel
    kernel[grid](s2, d2, s3, d3, src_block, dst_block, head if head is not None else src_block, count, p,
                 s2.stride(0), d2.stride(0), s3.stride(0), d3.stride(0), B=block_size, W=w,
                 BLOCK_W=block_w, G=programs, PER_HEAD=head is not None, PAIR=pair is not None)
