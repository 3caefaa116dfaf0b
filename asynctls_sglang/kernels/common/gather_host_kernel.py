"""Block copy between two token-major buffers, either of which may be pinned host memory (UVA)."""
import triton
import triton.language as tl


@triton.jit
def copy_blocks_kernel(src, dst, src_block, dst_block, head, count, s_src, s_dst,
                       B: tl.constexpr, W: tl.constexpr, BLOCK_W: tl.constexpr,
                       PER_HEAD: tl.constexpr):
    """Grid (P,), P the fixed plan capacity. Entry i_m < count[0] with src_block, dst_block >= 0
    copies rows src_block*B .. +B of `src` to rows dst_block*B .. +B of `dst`, columns
    [c, c + W) with c = head[i_m] * W (PER_HEAD) or 0. Entries past the count or with a -1 do
    nothing, so the launch has a fixed grid and reads its real size from device memory.
    Raw bits are copied: the wrapper passes integer views of the buffers."""
    i_m = tl.program_id(0)
    b_n = tl.load(count)
    b_src = tl.load(src_block + i_m).to(tl.int64)
    b_dst = tl.load(dst_block + i_m).to(tl.int64)
    m_on = (i_m < b_n) & (b_src >= 0) & (b_dst >= 0)
    if PER_HEAD:
        o_c = tl.load(head + i_m).to(tl.int64) * W
    else:
        o_c = tl.zeros([], dtype=tl.int64)
    o_t = tl.arange(0, B)
    p_src = src + (b_src * B + o_t)[:, None] * s_src + o_c
    p_dst = dst + (b_dst * B + o_t)[:, None] * s_dst + o_c
    for i_w in range(0, W, BLOCK_W):
        o_w = i_w + tl.arange(0, BLOCK_W)
        # [B, BLOCK_W]
        m_x = m_on & (o_t[:, None] >= 0) & (o_w[None, :] < W)
        b_x = tl.load(p_src + o_w[None, :], mask=m_x)
        tl.store(p_dst + o_w[None, :], b_x, mask=m_x)
