"""Block copy between two token-major buffers, either of which may be pinned host memory (UVA)."""
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["P"])  # a plan size: one compiled variant for all
def copy_blocks_kernel(src, dst, src2, dst2, src_block, dst_block, head, count, P,
                       s_src, s_dst, s_src2, s_dst2,
                       B: tl.constexpr, W: tl.constexpr, BLOCK_W: tl.constexpr, G: tl.constexpr,
                       PER_HEAD: tl.constexpr, PAIR: tl.constexpr):
    """_copy_blocks within one device (the window copy, seeds, load-back)."""
    _copy_blocks(src, dst, src2, dst2, src_block, dst_block, head, count, P, s_src, s_dst, s_src2, s_dst2,
                 B, W, BLOCK_W, G, PER_HEAD, PAIR)


@triton.jit(do_not_specialize=["P"])
def copy_blocks_h2d_kernel(src, dst, src2, dst2, src_block, dst_block, head, count, P,
                           s_src, s_dst, s_src2, s_dst2,
                           B: tl.constexpr, W: tl.constexpr, BLOCK_W: tl.constexpr, G: tl.constexpr,
                           PER_HEAD: tl.constexpr, PAIR: tl.constexpr):
    """_copy_blocks from pinned host memory to the GPU (the offload's fetches): its own name, so
    that a profile tells the transfers from the copies within the GPU."""
    _copy_blocks(src, dst, src2, dst2, src_block, dst_block, head, count, P, s_src, s_dst, s_src2, s_dst2,
                 B, W, BLOCK_W, G, PER_HEAD, PAIR)


@triton.jit(do_not_specialize=["P"])
def copy_blocks_d2h_kernel(src, dst, src2, dst2, src_block, dst_block, head, count, P,
                           s_src, s_dst, s_src2, s_dst2,
                           B: tl.constexpr, W: tl.constexpr, BLOCK_W: tl.constexpr, G: tl.constexpr,
                           PER_HEAD: tl.constexpr, PAIR: tl.constexpr):
    """_copy_blocks from the GPU to pinned host memory (the write-through)."""
    _copy_blocks(src, dst, src2, dst2, src_block, dst_block, head, count, P, s_src, s_dst, s_src2, s_dst2,
                 B, W, BLOCK_W, G, PER_HEAD, PAIR)


@triton.jit
def _copy_blocks(src, dst, src2, dst2, src_block, dst_block, head, count, P, s_src, s_dst, s_src2, s_dst2,
                 B: tl.constexpr, W: tl.constexpr, BLOCK_W: tl.constexpr, G: tl.constexpr,
                 PER_HEAD: tl.constexpr, PAIR: tl.constexpr):
    """Grid (G, S): a few programs that walk the plan (program g takes entries g, g + G, ...), so
    the copy, bound by PCIe, holds a few SMs instead of one per entry while the model's kernels
    run beside it (H200: a grid of one program per entry slowed a concurrent GEMM by 37%, G = 32
    not at all, at the same 44-46 GB/s; benchmarks/copy_bench.py). S > 1 splits each entry's
    columns over S programs (program (g, s) takes column chunks s, s + S, ...): for copies
    within the GPU, bound by HBM and on the decode's path (offload's window copy: 12 us per
    layer with S = 1 at 8 x 4k on the H200). Entry i_m < min(count[0], P)
    with src_block, dst_block >= 0 copies rows src_block*B .. +B of `src` to rows dst_block*B .. +B
    of `dst`, columns [c, c + W) with c = head[i_m] * W (PER_HEAD) or 0, and the same rows of
    src2 -> dst2 (PAIR: K and V in one launch). Other entries do nothing; the real size is read
    from device memory. Raw bits are copied: the wrapper passes integer views of the buffers."""
    b_n = tl.minimum(tl.load(count), P)
    o_t = tl.arange(0, B)
    for i_m in range(tl.program_id(0), b_n, G):
        b_src = tl.load(src_block + i_m).to(tl.int64)
        b_dst = tl.load(dst_block + i_m).to(tl.int64)
        m_on = (b_src >= 0) & (b_dst >= 0)
        if PER_HEAD:
            o_c = tl.load(head + i_m).to(tl.int64) * W
        else:
            o_c = tl.zeros([], dtype=tl.int64)
        r_src = (b_src * B + o_t)[:, None]
        r_dst = (b_dst * B + o_t)[:, None]
        for i_w in range(tl.program_id(1) * BLOCK_W, W, tl.num_programs(1) * BLOCK_W):
            o_w = o_c + i_w + tl.arange(0, BLOCK_W)[None, :]
            # [B, BLOCK_W]
            m_x = m_on & (o_t[:, None] >= 0) & (o_w < o_c + W)
            tl.store(dst + r_dst * s_dst + o_w, tl.load(src + r_src * s_src + o_w, mask=m_x), mask=m_x)
            if PAIR:
                tl.store(dst2 + r_dst * s_dst2 + o_w, tl.load(src2 + r_src * s_src2 + o_w, mask=m_x), mask=m_x)
