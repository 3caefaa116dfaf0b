"""Fixed-k top-k of each row with the tie-break "higher score first, then lower index".

One program per row, three phases:
  1. radix select: four 8-bit histogram passes over the row's order-preserving 32-bit score
     keys find the k-th largest key T and how many entries equal to T are needed;
  2. ordered compaction: one pass takes every key > T and the first `need` keys == T (by
     index), writing a 64-bit (key, ~index) composite to the row of `out` (used as scratch);
  3. the k composites are bitonic-sorted in registers (descending: score, then lower index)
     and replaced by their index (or by pos[index]). Slots past the number of finite scores
     hold -1. With SORTED=False the sort is skipped: the same set comes out in index order
     (the sort of k ~ 2048 composites is most of the kernel's time, and attention over a set
     of positions does not depend on their order).
The row is re-read from memory (L2) by every pass, so any length N works; only k is bounded
by what a register sort can hold (BLOCK_K = next power of two >= k).
"""
import triton
import triton.language as tl


@triton.jit
def _ordered_key(x):
    """fp32 -> int32 with the same order (signed compare); -0.0 and +0.0 map to the same key."""
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def topk_kernel(scores, pos, out, N, K, s_sr, s_pr, s_or,
                HAS_POS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                SORTED: tl.constexpr = True):
    """Grid (rows,). scores: [rows, N] fp32; pos: [rows, N] int64 (HAS_POS); out: [rows, K] int64."""
    i_r = tl.program_id(0).to(tl.int64)
    p_s = scores + i_r * s_sr
    p_o = out + i_r * s_or
    o_b = tl.arange(0, 256)
    # phase 1: radix select of the K-th largest key among the finite scores
    b_prefix = tl.zeros([], dtype=tl.int64)
    b_need = tl.zeros([], dtype=tl.int32) + K
    for i_p in tl.static_range(4):
        # NOTE: a plain name, not `SHIFT: tl.constexpr = ...`: the compiler unrolls static_range
        # in one scope and refuses to re-assign an annotated constexpr (the interpreter allows it);
        # i_p is a constexpr, so SHIFT is one too.
        SHIFT = 24 - 8 * i_p
        b_hist = tl.zeros([256], dtype=tl.int32)
        for i_n in range(0, N, BLOCK_N):
            o_n = i_n + tl.arange(0, BLOCK_N)
            # [BLOCK_N]
            b_x = tl.load(p_s + o_n, mask=o_n < N, other=float("-inf"))
            b_u = _ordered_key(b_x).to(tl.int64) + 2147483647 + 1
            m_n = (b_x > float("-inf")) & ((b_u >> (SHIFT + 8)) == (b_prefix >> (SHIFT + 8)))
            b_hist += tl.histogram(((b_u >> SHIFT) & 255).to(tl.int32), 256, mask=m_n)
        if i_p == 0:
            # fewer finite scores than K: take them all
            b_need = tl.minimum(b_need, tl.sum(b_hist, axis=0))
        # [256] entries with a digit >= d
        b_ge = tl.cumsum(b_hist, axis=0, reverse=True)
        b_digit = tl.sum((b_ge >= b_need).to(tl.int32), axis=0) - 1
        b_above = tl.sum(tl.where(o_b == b_digit, b_ge - b_hist, 0), axis=0)
        b_need = b_need - b_above
        b_prefix = b_prefix | (b_digit.to(tl.int64) << SHIFT)
    b_taken = tl.zeros([], dtype=tl.int32)
    b_ties = tl.zeros([], dtype=tl.int32)
    # phase 2: ordered compaction into out's row
    for i_n in range(0, N, BLOCK_N):
        o_n = i_n + tl.arange(0, BLOCK_N)
        # [BLOCK_N]
        b_x = tl.load(p_s + o_n, mask=o_n < N, other=float("-inf"))
        b_key = _ordered_key(b_x)
        b_u = b_key.to(tl.int64) + 2147483647 + 1
        m_ok = b_x > float("-inf")
        m_eq = m_ok & (b_u == b_prefix)
        b_eq = m_eq.to(tl.int32)
        m_take = (m_ok & (b_u > b_prefix)) | (m_eq & (tl.cumsum(b_eq, axis=0) - b_eq + b_ties < b_need))
        b_take = m_take.to(tl.int32)
        o_slot = tl.cumsum(b_take, axis=0) - b_take + b_taken
        b_comp = (b_key.to(tl.int64) << 32) | (4294967295 - o_n.to(tl.int64))
        tl.store(p_o + o_slot, b_comp, mask=m_take)
        b_ties += tl.sum(b_eq, axis=0)
        b_taken += tl.sum(b_take, axis=0)
    tl.debug_barrier()
    # phase 3: sort the taken composites; b_taken = min(K, finite scores)
    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < b_taken
    # [BLOCK_K]
    b_comp = tl.load(p_o + o_k, mask=m_k, other=-9223372036854775807 - 1)
    if SORTED:
        b_comp = tl.sort(b_comp, descending=True)
    b_idx = 4294967295 - (b_comp & 4294967295)
    if HAS_POS:
        b_idx = tl.load(pos + i_r * s_pr + b_idx, mask=m_k, other=-1)
    tl.debug_barrier()
    tl.store(p_o + o_k, tl.where(m_k, b_idx, -1), mask=o_k < K)
