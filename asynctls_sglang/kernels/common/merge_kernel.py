"""Merge of the token-axis splits of a decode attention: a log-sum-exp weighted average."""
import triton
import triton.language as tl


@triton.jit
def merge_splits_kernel(mid_o, mid_lse, out, S,
                        s_mb, s_mh, s_ms, s_lb, s_lh, s_ob, s_oh,
                        DV: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Grid (bs, Hq, cdiv(DV, BLOCK_DV)). mid_lse is base 2, -inf for a split with no valid
    token (its mid_o row is zeros); a head with no valid token at all gets zeros."""
    i_b, i_q, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    # 64-bit row offsets: bs * Hq * S * Dv can pass 2^31 (e.g. 512 x 128 heads x 64 splits x 512)
    i_b = i_b.to(tl.int64)
    o_s = tl.arange(0, BLOCK_S)
    m_s = o_s < S
    o_v = i_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    m_v = o_v < DV
    # [BLOCK_S]
    b_lse = tl.load(mid_lse + i_b * s_lb + i_q * s_lh + o_s, mask=m_s, other=float("-inf"))
    b_max = tl.max(b_lse, axis=0)
    b_w = tl.exp2(b_lse - tl.where(b_max == float("-inf"), 0.0, b_max))
    b_sum = tl.sum(b_w, axis=0)
    # [BLOCK_S, BLOCK_DV]
    p_o = mid_o + i_b * s_mb + i_q * s_mh + o_s[:, None] * s_ms + o_v[None, :]
    b_o = tl.load(p_o, mask=m_s[:, None] & m_v[None, :], other=0.0)
    # [BLOCK_DV]
    b_out = tl.sum(b_o * b_w[:, None], axis=0) / tl.where(b_sum > 0, b_sum, 1.0)
    tl.store(out + i_b * s_ob + i_q * s_oh + o_v, b_out.to(out.dtype.element_ty), mask=m_v)


@triton.jit
def split_columns(counts, i_b, i_s, K, SPLIT, HAS_COUNTS: tl.constexpr):
    """[start, end) of the columns split i_s of row i_b reads: its SPLIT columns of the K, cut at
    counts[i_b] when HAS_COUNTS (the row reads only its first counts[b] columns, so a split past
    them is empty and its program exits at once)."""
    n_len = K
    if HAS_COUNTS:
        n_len = tl.minimum(tl.load(counts + i_b).to(tl.int32), K)
    n_start = i_s * SPLIT
    return n_start, tl.minimum(n_start + SPLIT, n_len)


@triton.jit
def split_slots(p_pos, p_r2t, i_n, n_end, BLOCK_N: tl.constexpr):
    """Columns [i_n, i_n + BLOCK_N) of a split ending at n_end -> (positions, -1 past the split or
    unused; their slots in the request's row of req_to_token p_r2t, int64, 0 where unused)."""
    o_n = i_n + tl.arange(0, BLOCK_N)
    b_pos = tl.load(p_pos + o_n, mask=o_n < n_end, other=-1)
    b_slot = tl.load(p_r2t + b_pos, mask=b_pos >= 0, other=0).to(tl.int64)
    return b_pos, b_slot


@triton.jit
def kv_rows(buf, pool, b_slot, s_b, s_p, HAS_POOL: tl.constexpr):
    """[BLOCK_N] slots -> [BLOCK_N, 1] row pointers: row b_slot of buf, or with HAS_POOL, where
    b_slot < 0, row -b_slot - 1 of pool (the offload's window tokens, read in place from the
    device pool instead of a copy in the resident buffers)."""
    if HAS_POOL:
        m_p = b_slot < 0
        return tl.where(m_p, pool + (-b_slot - 1) * s_p, buf + tl.where(m_p, 0, b_slot) * s_b)[:, None]
    return (buf + b_slot * s_b)[:, None]
