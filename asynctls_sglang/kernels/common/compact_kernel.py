"""Ordered compaction: the first k entries of a row whose flag is set, in row order."""
import triton
import triton.language as tl


@triton.jit
def compact_kernel(pos, ok, out, N, K, s_pr, s_kr, s_or, BLOCK_N: tl.constexpr):
    """Grid (rows,). out[r, :] = pos[r, ok[r]][:K], -1 past the number of set flags."""
    i_r = tl.program_id(0).to(tl.int64)
    b_taken = tl.zeros([], dtype=tl.int32)
    for i_n in range(0, N, BLOCK_N):
        o_n = i_n + tl.arange(0, BLOCK_N)
        # [BLOCK_N]
        b_ok = (tl.load(ok + i_r * s_kr + o_n, mask=o_n < N, other=0) != 0).to(tl.int32)
        o_slot = tl.cumsum(b_ok, axis=0) - b_ok + b_taken
        m_put = (b_ok != 0) & (o_slot < K)
        b_pos = tl.load(pos + i_r * s_pr + o_n, mask=m_put, other=-1)
        tl.store(out + i_r * s_or + o_slot, b_pos, mask=m_put)
        b_taken += tl.sum(b_ok, axis=0)
    for i_k in range(0, K, BLOCK_N):
        o_k = i_k + tl.arange(0, BLOCK_N)
        tl.store(out + i_r * s_or + o_k, tl.full([BLOCK_N], -1, dtype=tl.int64),
                 mask=(o_k < K) & (o_k >= b_taken))
